package queue

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/microscaling/microscaling/scaler/egress"
)

// DefaultAllow is the queue endpoint policy when the operator sets none:
// private, shared (CGNAT) and loopback networks, where in-cluster Services
// and the local demo live.
const DefaultAllow = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,127.0.0.0/8,fc00::/7,::1/128"

// Policy says which queue endpoints tenants may name: an address is read
// when its resolved IP is in one of Nets, or its host name ends with one of
// Suffixes (a DNS suffix such as ".svc.cluster.local", or a whole name) and
// it resolves to a private, shared (CGNAT) or loopback address: a name
// matched by suffix (an ExternalName Service, say) never reaches a public
// address that Nets does not allow. Link-local, multicast and unspecified
// addresses, every cloud's metadata addresses (metadataNets), and each of
// Deny (the API server's), are refused whatever the policy says.
type Policy struct {
	Nets     []netip.Prefix
	Suffixes []string
	Deny     *egress.Denied
}

// ParsePolicy reads a comma-separated list of CIDRs and DNS suffixes.
func ParsePolicy(allow string, deny *egress.Denied) (Policy, error) {
	p := Policy{Deny: deny}
	for _, e := range strings.Split(allow, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case strings.Contains(e, "/"):
			n, err := netip.ParsePrefix(e)
			if err != nil {
				return Policy{}, fmt.Errorf("queue allow-list entry %q: %w", e, err)
			}
			p.Nets = append(p.Nets, n.Masked())
		default:
			name := strings.ToLower(strings.TrimPrefix(e, "."))
			if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
				return Policy{}, fmt.Errorf("queue allow-list entry %q: neither a CIDR nor a DNS suffix: %s", e, strings.Join(errs, "; "))
			}
			p.Suffixes = append(p.Suffixes, name)
		}
	}
	return p, nil
}

// nameAllowed reports whether host matches a DNS suffix of the policy.
func (p Policy) nameAllowed(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, s := range p.Suffixes {
		if host == s || strings.HasSuffix(host, "."+s) {
			return true
		}
	}
	return false
}

// cgnat is the shared address space (RFC 6598), where some clusters put
// pods and Services.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// check reports whether ip:port may be dialed; byName: the host name the
// address was resolved from matched a DNS suffix.
func (p Policy) check(ap netip.AddrPort, byName bool) error {
	a := ap.Addr().Unmap()
	if egress.Refused(a) {
		return egress.ErrNotAllowed
	}
	if err := p.Deny.Check(netip.AddrPortFrom(a, ap.Port()), ""); err != nil {
		return err
	}
	if byName && (a.IsPrivate() || a.IsLoopback() || cgnat.Contains(a)) {
		return nil
	}
	for _, n := range p.Nets {
		if n.Contains(a) {
			return nil
		}
	}
	return egress.ErrNotAllowed
}

// DialContext dials only addresses the policy allows: a host name is
// resolved here, each address checked, and the checked address is the one
// dialed, so a DNS answer cannot swap in another between the check and the
// dial. Sources that do not speak HTTP (Redis) dial with it.
func (p Policy) DialContext() func(ctx context.Context, network, address string) (net.Conn, error) {
	return egress.Dial(&net.Dialer{Timeout: 5 * time.Second}, func(ap netip.AddrPort, host string) error {
		return p.check(ap, p.nameAllowed(host))
	})
}

// NewClient is the HTTP client of the queue sources. Queue addresses come
// from tenants, so it follows no redirect, uses no proxy, and dials only
// addresses the policy allows (DialContext).
func NewClient(p Policy) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         p.DialContext(),
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// APIServerAddrs resolves the API server's host (a URL's host:port) to the
// addresses the queue client must refuse.
func APIServerAddrs(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", hostport, err)
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil, fmt.Errorf("API server port %q: %w", port, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving the API server %q: %w", host, err)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(p)))
	}
	return out, nil
}
