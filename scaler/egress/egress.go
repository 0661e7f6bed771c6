// Package egress dials addresses that tenants name (queue servers, the
// nsqds a lookupd announces, registries and their token realms) under one
// rule: a host name is resolved here, each address checked, and the checked
// address is the one dialed, so a DNS answer cannot swap in another between
// the check and the dial. What no tenant may reach whatever the operator
// allows is Refused.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
)

// ErrNotAllowed is what an address a tenant may not reach gives.
var ErrNotAllowed = errors.New("address not allowed")

// metadataNets are the instance metadata services of the major clouds
// outside link-local (which is refused as a whole, and holds the IPv4
// endpoint of AWS, Google Cloud, Azure, Oracle, OpenStack, DigitalOcean,
// Hetzner and Tencent): AWS's IPv6 endpoints (IMDS fd00:ec2::254, and its
// DNS, time and pod-identity services beside it), Google Cloud's IPv6
// metadata server fd20:ce::254, Azure's WireServer 168.63.129.16, Alibaba
// Cloud's 100.100.100.200 (inside the CGNAT range), and Oracle Cloud's
// legacy 192.0.0.192.
var metadataNets = []netip.Prefix{
	netip.MustParsePrefix("fd00:ec2::/64"),
	netip.MustParsePrefix("fd20:ce::254/128"),
	netip.MustParsePrefix("168.63.129.16/32"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("192.0.0.192/32"),
}

// Refused reports whether a is never dialed for a tenant: link-local
// (cloud metadata), every cloud's metadata addresses outside link-local,
// multicast and unspecified addresses.
func Refused(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	for _, n := range metadataNets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// Check says whether ap may be dialed; host is the name it was resolved
// from (the address itself when none). It returns ErrNotAllowed, wrapped
// or not, for an address it refuses.
type Check func(ap netip.AddrPort, host string) error

// Dial returns a DialContext that dials through d only addresses check
// allows, and never one Refused.
func Dial(d *net.Dialer, check Check) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotAllowed, err)
		}
		pn, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: port %q", ErrNotAllowed, port)
		}
		ips := []netip.Addr{}
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = append(ips, ip)
		} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		var last error = ErrNotAllowed
		for _, ip := range ips {
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(pn))
			if Refused(ap.Addr()) {
				last = ErrNotAllowed
				continue
			}
			if last = check(ap, host); last != nil {
				continue
			}
			c, err := d.DialContext(ctx, network, ap.String())
			if err == nil {
				return c, nil
			}
			last = err
		}
		return nil, last
	}
}

// Denied are the addresses no tenant may reach whatever the operator
// allows: the API server's, as the client config names it (fixed) and as
// the cluster lists its endpoints (live: they move with the control-plane
// nodes, and the Service address alone leaves the real ones reachable).
// Safe for concurrent use; a nil Denied refuses nothing.
type Denied struct {
	fixed []netip.AddrPort
	live  atomic.Pointer[[]netip.AddrPort]
}

// NewDenied refuses fixed, and what SetLive adds.
func NewDenied(fixed ...netip.AddrPort) *Denied {
	return &Denied{fixed: unmapped(fixed)}
}

// SetLive replaces the live addresses.
func (d *Denied) SetLive(aps []netip.AddrPort) {
	u := unmapped(aps)
	d.live.Store(&u)
}

// Live are the live addresses last set.
func (d *Denied) Live() []netip.AddrPort {
	if p := d.live.Load(); p != nil {
		return *p
	}
	return nil
}

func unmapped(aps []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, len(aps))
	for i, ap := range aps {
		out[i] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return out
}

// Check is a Check that refuses the denied addresses and allows the rest.
func (d *Denied) Check(ap netip.AddrPort, _ string) error {
	if d == nil {
		return nil
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if slices.Contains(d.fixed, ap) || slices.Contains(d.Live(), ap) {
		return ErrNotAllowed
	}
	return nil
}
