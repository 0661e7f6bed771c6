package nsq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// errNotAllowed is what a queue address that tenants may not reach gives.
var errNotAllowed = errors.New("address not allowed for a queue")

// NewQueueClient is the HTTP client of the queue reader. Queue addresses
// come from tenants, so it follows no redirect, uses no proxy, and refuses
// at dial time (after name resolution, so a DNS answer cannot smuggle one
// in) link-local addresses (cloud metadata services live there), unspecified
// and multicast addresses, and each address in deny (the API server's).
func NewQueueClient(deny ...netip.AddrPort) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %v", errNotAllowed, err)
		}
		return allowedQueueAddr(ap, deny)
	}}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         d.DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func allowedQueueAddr(ap netip.AddrPort, deny []netip.AddrPort) error {
	a := ap.Addr().Unmap()
	switch {
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast(), a.IsUnspecified():
		return errNotAllowed
	}
	for _, d := range deny {
		if d.Addr().Unmap() == a && d.Port() == ap.Port() {
			return errNotAllowed
		}
	}
	return nil
}

// producerAddr checks an nsqd address that an nsqlookupd announced: a host
// name or IP and a port, nothing that could carry a path or credentials.
func producerAddr(host string, port int) (string, error) {
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: port out of range", errBadProducer)
	}
	if _, err := netip.ParseAddr(host); err != nil && len(validation.IsDNS1123Subdomain(host)) > 0 {
		return "", fmt.Errorf("%w: not a host name or IP", errBadProducer)
	}
	return net.JoinHostPort(host, fmt.Sprint(port)), nil
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

// ReadError is a failed read of an nsqd or nsqlookupd, as the tenant whose
// queue it is may see it: the role, the address from their annotation, and
// a class of error, never a byte of the answer. Unwrap gives the whole
// error, for the operator's logs.
type ReadError struct {
	Role, Host, Class string
	err               error
}

func (e *ReadError) Error() string { return e.Role + " " + e.Host + ": " + e.Class }
func (e *ReadError) Unwrap() error { return e.err }

// errTooLarge marks an answer over the size bound.
var errTooLarge = errors.New("answer too large")

// errBadProducer marks an nsqd address an nsqlookupd announced that is not
// a plain host:port.
var errBadProducer = errors.New("invalid nsqd address from nsqlookupd")

func readError(role, host string, err error) error {
	var (
		he  *httpError
		ne  net.Error
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
		cls string
	)
	switch {
	case errors.Is(err, errNotAllowed):
		cls = "address not allowed by the queue endpoint policy"
	case errors.Is(err, errTooLarge):
		cls = errTooLarge.Error()
	case errors.Is(err, errBadProducer):
		cls = errBadProducer.Error()
	case errors.Is(err, errTooManyProducers):
		cls = errTooManyProducers.Error()
	case errors.As(err, &he):
		cls = fmt.Sprintf("HTTP %d", he.status)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		cls = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		cls = "connection refused"
	case errors.As(err, &se), errors.As(err, &te):
		cls = "not an NSQ answer"
	default:
		cls = "unreachable"
	}
	return &ReadError{Role: role, Host: host, Class: cls, err: err}
}
