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
			h.Record(m, fmt.Sprintf("ns/g%d", 3-i), "queue", int32(i), Point{T: int64(p), Desired: int32(p)}, Status{Desired: int32(p)})
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
	if h.State() != st {
		t.Error("State copied the history again with nothing changed")
	}
	first := st.Members[0]
	h.Record(h.Member(first.Namespace, first.Name), first.Group, "queue", first.Priority, Point{T: 99, Desired: 99}, Status{Desired: 99})
	if p := st.Members[0].Points; p[len(p)-1].Desired == 99 || st.Members[0].Status.Desired == 99 {
		t.Error("a State taken before a change shows it: it shares the history's points")
	}
	if now := h.State(); now.Members[0].Status.Desired != 99 {
		t.Errorf("State after a change: status %+v, want desired 99", now.Members[0].Status)
	}
	h.Forget("ns", "m0")
	if n := len(h.State().Members); n != 3 {
		t.Errorf("after Forget: %d members, want 3", n)
	}
	// Members that join later shrink what each keeps, including the
	// memory of those recorded while there were few.
	for i := range 26 {
		h.Member("ns", fmt.Sprintf("late%d", i))
	}
	m1 := h.Member("ns", "m1")
	for p := range 3 {
		h.Record(m1, "ns/g2", "queue", 1, Point{T: int64(100 + p)}, Status{})
	}
	if len(m1.Points) != 2 || cap(m1.Points) > 4 {
		t.Errorf("with 29 members and 60 points in all: %d points in a slice of %d, want 2 in at most 4", len(m1.Points), cap(m1.Points))
	}
	var nilHistory *History
	nilHistory.Record(nilHistory.Member("ns", "x"), "g", "queue", 1, Point{}, Status{}) // a controller without a dashboard
}

// Filter keeps the members and the events of the namespaces it is told to;
// Namespaces lists each once.
func TestFilter(t *testing.T) {
	h := NewHistory(10, 10)
	for _, ns := range []string{"b", "a", "b"} {
		for _, name := range []string{"x", "y"} {
			h.Record(h.Member(ns, name), ns+"/g", "queue", 1, Point{}, Status{})
		}
		h.Event(ns+"/g", "scaled in "+ns, time.Unix(0, 0))
	}
	st := h.State()
	if got := fmt.Sprint(st.Namespaces()); got != "[a b]" {
		t.Errorf("Namespaces() = %s, want [a b]", got)
	}
	only := st.Filter(func(ns string) bool { return ns == "a" })
	if len(only.Members) != 2 || only.Members[0].Namespace != "a" || only.Members[1].Namespace != "a" {
		t.Errorf("members of a: %+v", only.Members)
	}
	if len(only.Events) != 1 || only.Events[0].Message != "scaled in a" {
		t.Errorf("events of a: %+v", only.Events)
	}
	if none := st.Filter(func(string) bool { return false }); len(none.Members) != 0 || len(none.Events) != 0 || none.Members == nil {
		t.Errorf("nothing allowed: %+v (members must encode as [], not null)", none)
	}
}
