package queue

import (
	"fmt"
	"strings"
	"testing"
)

// A host name that is not one, an address that is not an IP and a count
// below zero never count as such; an address two consumers share tells
// neither apart; Merge sums a consumer of several queues.
func TestHoldings(t *testing.T) {
	var h Holdings
	h.Add([]Consumer{
		{Hostname: "consumer-1", Remote: "10.0.0.1:4000", Held: 3},
		{Hostname: "Not_A_Host", Remote: "not-an-ip:4000", Held: 9},
		{Hostname: strings.Repeat("a", 300), Remote: "10.0.0.2", Held: 9}, // no port
		{Hostname: "consumer-2", Remote: "10.0.0.3:1", Held: -5},
		{Hostname: "shared-a", Remote: "[fd00::1]:1", Held: 1},
		{Hostname: "shared-b", Remote: "[fd00::1]:2", Held: 2},
	})
	for _, tc := range []struct {
		host, addr string
		want       int64
		found      bool
	}{
		{"consumer-1", "", 3, true},
		{"other", "10.0.0.1", 3, true},
		{"Not_A_Host", "", 0, false},
		{"", "not-an-ip", 0, false},
		{"consumer-2", "", 0, true},
		{"", "fd00::1", 0, false},
		{"shared-b", "fd00::1", 2, true},
		{"", "", 0, false},
	} {
		got, found := h.Of(tc.host, tc.addr)
		if got != tc.want || found != tc.found {
			t.Errorf("Of(%q, %q) = %d, %v; want %d, %v", tc.host, tc.addr, got, found, tc.want, tc.found)
		}
	}
	var o Holdings
	o.Add([]Consumer{{Hostname: "consumer-1", Remote: "10.0.0.1:4001", Held: 2}, {Hostname: "consumer-3", Remote: "10.0.0.9:1", Held: 1}})
	h.Merge(o)
	if got, _ := h.Of("consumer-1", ""); got != 5 {
		t.Errorf("consumer-1 of two queues holds %d, want 5", got)
	}
	if got, found := h.Of("", "10.0.0.9"); got != 1 || !found {
		t.Errorf("a consumer of the second queue alone: %d, %v", got, found)
	}

	var big Holdings
	cs := make([]Consumer, 2*MaxHolders)
	for i := range cs {
		cs[i] = Consumer{Hostname: fmt.Sprintf("c-%d", i), Remote: fmt.Sprintf("10.1.%d.%d:1", i/256, i%256), Held: 1}
	}
	big.Add(cs)
	big.Merge(Holdings{ByHostname: map[string]int64{"late": 1}})
	if n := len(big.ByHostname) + len(big.ByAddress); n > MaxHolders {
		t.Errorf("%d entries kept, want at most %d", n, MaxHolders)
	}
}
