package policy

import (
	"testing"
	"time"
)

// Replicas asked for at one tick, consuming three ticks later: the
// start-up is measured from the decision to the middle of the last tick
// they were not consuming and the first they were (2.5 s), and the median
// of the last five is what is learned, so one slow start does not set it.
func TestStartupLearnedFromScaleUps(t *testing.T) {
	var s startup
	now := t0
	cur, consuming := int32(2), int32(2)
	// A tick a second: the decision is made at one, seen at the next.
	tick := func() {
		now = now.Add(time.Second)
		s.observe(now, cur, consuming)
	}
	s.observe(now, cur, consuming)
	if got := s.learned(); got != 0 {
		t.Fatalf("learned %v before any scale-up, want 0", got)
	}
	for i, took := range []int{3, 3, 20, 4, 3} {
		// The decision at this tick asks for two more; they are seen asked
		// for at the next and consume took seconds after the decision.
		cur += 2
		tick()
		if got, want := s.onWay(now).allIn(), time.Duration(0); i == 0 && got != want {
			t.Errorf("on the way in %v before anything was measured and at once, want %v", got, want)
		}
		for range took - 2 {
			tick()
		}
		consuming = cur
		tick()
	}
	if got := s.learned(); got != 2500*time.Millisecond {
		t.Errorf("learned %v, want the median 2.5s", got)
	}
	// Replicas asked for 2 s ago and not consuming yet: the rest of the
	// 2.5 s start-up.
	cur += 2
	tick()
	tick()
	if got := s.onWay(now).allIn(); got != 500*time.Millisecond {
		t.Errorf("on the way in %v, want 500ms", got)
	}
	// Still not there after 5 s: expected no sooner than they have taken.
	for range 3 {
		tick()
	}
	if got := s.expected(now); got != 5*time.Second {
		t.Errorf("expected start-up %v while replicas have been on the way 5s, want 5s", got)
	}
}

// Replicas asked for that never consume (unschedulable) are forgotten
// after maxStartup, not counted as a start-up; a scale-down that takes
// them away before they start ends their wait too.
func TestStartupForgetsWhatNeverStarts(t *testing.T) {
	var s startup
	s.observe(t0, 1, 1)
	s.observe(t0.Add(time.Second), 3, 1)
	s.observe(t0.Add(maxStartup+2*time.Second), 3, 1)
	if s.np != 0 || s.learned() != 0 {
		t.Errorf("pending %d, learned %v after %v: want forgotten", s.np, s.learned(), maxStartup)
	}
	s.observe(t0.Add(maxStartup+3*time.Second), 5, 1)
	s.observe(t0.Add(maxStartup+4*time.Second), 1, 1)
	if s.np != 0 || s.learned() != 0 {
		t.Errorf("pending %d, learned %v after a scale-down to what consumes: want nothing", s.np, s.learned())
	}
}
