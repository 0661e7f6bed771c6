package dashboard

import (
	"fmt"
	"testing"
	"time"
)

// The history is bounded per member, in all, and in events; a forgotten
// member is gone; State is a copy sorted by group then priority.
func TestHistory(t *testing.T) {
	h := NewHistory(20, 5)
	h.TotalPoints = 60
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := make([]*MemberHistory, 4)
	for i := range ms {
		ms[i] = h.Member("ns", fmt.Sprintf("m%d", i))
	}
	for p := range 50 { // every member decided on every tick
		for i, m := range ms {
			h.Record(m, fmt.Sprintf("ns/g%d", 3-i), "queue", int32(i), Point{T: int64(p), Desired: int32(p)})
		}
	}
	for i := range 8 {
		h.Event("ns/g", fmt.Sprintf("e%d", i), t0.Add(time.Duration(i)*time.Second))
	}
	st := h.State()
	if len(st.Members) != 4 {
		t.Fatalf("%d members, want 4", len(st.Members))
	}
	for _, m := range st.Members {
		// 60 points over 4 members: 15 each, the newest kept.
		if len(m.Points) != 15 || m.Points[14].Desired != 49 {
			t.Errorf("%s: %d points, last %+v; want 15 ending at 49", m.Name, len(m.Points), m.Points[len(m.Points)-1])
		}
	}
	if st.Members[0].Group != "ns/g0" {
		t.Errorf("first member's group %q, want ns/g0 (sorted by group)", st.Members[0].Group)
	}
	if len(st.Events) != 5 || st.Events[0].Message != "e3" {
		t.Errorf("events %+v, want the last 5 from e3", st.Events)
	}
	st.Members[0].Points[0].Desired = -1 // a copy: the history is unchanged
	if h.State().Members[0].Points[0].Desired == -1 {
		t.Error("State shares its points with the history")
	}
	h.Forget("ns", "m0")
	if n := len(h.State().Members); n != 3 {
		t.Errorf("after Forget: %d members, want 3", n)
	}
	var nilHistory *History
	nilHistory.Record(nilHistory.Member("ns", "x"), "g", "queue", 1, Point{}) // a controller without a dashboard
}
