package egress

import (
	"errors"
	"net/netip"
	"testing"
)

func TestDeniedFixedAndLive(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.1:443")
	real1 := netip.MustParseAddrPort("192.168.1.10:6443")
	real2 := netip.MustParseAddrPort("[fd00::10]:6443")
	d := NewDenied(vip)
	refused := func(s string) bool {
		err := d.Check(netip.MustParseAddrPort(s), "")
		if err != nil && !errors.Is(err, ErrNotAllowed) {
			t.Fatalf("%s: %v, want ErrNotAllowed", s, err)
		}
		return err != nil
	}
	for _, step := range []struct {
		name string
		live []netip.AddrPort
		want map[string]bool
	}{
		{"before the cluster is read", nil, map[string]bool{"10.96.0.1:443": true, "192.168.1.10:6443": false, "10.96.0.1:80": false}},
		{"the endpoints read", []netip.AddrPort{real1, real2}, map[string]bool{
			"10.96.0.1:443": true, "192.168.1.10:6443": true, "[::ffff:192.168.1.10]:6443": true, "[fd00::10]:6443": true,
			"192.168.1.10:4151": false, "192.168.1.11:6443": false}},
		{"a control-plane node replaced", []netip.AddrPort{real2}, map[string]bool{
			"10.96.0.1:443": true, "192.168.1.10:6443": false, "[fd00::10]:6443": true}},
	} {
		if step.live != nil {
			d.SetLive(step.live)
		}
		for addr, want := range step.want {
			if got := refused(addr); got != want {
				t.Errorf("%s: %s refused %v, want %v", step.name, addr, got, want)
			}
		}
	}
	var none *Denied
	if err := none.Check(vip, ""); err != nil {
		t.Errorf("a nil Denied refused %s: %v", vip, err)
	}
}
