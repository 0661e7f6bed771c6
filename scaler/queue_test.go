package scaler

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func known(arrival, service float64) Rates {
	return Rates{Arrival: arrival, ArrivalKnown: true, Service: service, ServiceKnown: true}
}

func TestDecideQueue(t *testing.T) {
	policy := QueuePolicy{Target: 50, Min: 0, Max: 20, ScaleDownDelay: 30 * time.Second}
	tests := []struct {
		name   string
		policy QueuePolicy
		// history is fed first, one second apart, ending 1 s before in.
		history []QueueInput
		in      QueueInput
		want    int32
		reason  string
	}{
		{name: "steady state changes nothing", in: QueueInput{Current: 5, Backlog: 50, BacklogKnown: true, Rates: known(50, 10)}, want: 5},
		{name: "steady state inside the dead band", in: QueueInput{Current: 5, Backlog: 40, BacklogKnown: true, Rates: known(30, 10)}, want: 5},
		{name: "missing metric never scales down", in: QueueInput{Current: 5, BacklogKnown: false}, want: 5, reason: "unreadable"},
		{name: "missing metric never scales up", in: QueueInput{Current: 5, Backlog: 5000, BacklogKnown: false}, want: 5},
		{name: "rate aware grow", in: QueueInput{Current: 2, Backlog: 150, BacklogKnown: true, Rates: known(40, 10)}, want: 6, reason: "in 40.0/s"},
		{name: "no growth at or below target", in: QueueInput{Current: 2, Backlog: 50, BacklogKnown: true, Rates: known(400, 10)}, want: 2},
		{name: "fallback proportional while service rate unknown", in: QueueInput{Current: 2, Backlog: 200, BacklogKnown: true}, want: 8, reason: "service rate unknown"},
		{name: "from zero with a small backlog", in: QueueInput{Current: 0, Backlog: 3, BacklogKnown: true}, want: 1},
		{name: "from zero with a large backlog", in: QueueInput{Current: 0, Backlog: 500, BacklogKnown: true}, want: 10},
		{name: "never zero while messages wait", in: QueueInput{Current: 1, Backlog: 2, BacklogKnown: true, Rates: known(0, 10)}, want: 1},
		{name: "empty queue goes to min", policy: QueuePolicy{Target: 50, Min: 1, Max: 20}, in: QueueInput{Current: 4, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 1},
		{name: "empty queue goes to zero", policy: QueuePolicy{Target: 50, Max: 20}, in: QueueInput{Current: 4, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 0},
		{name: "no shrink above 0.7 target", policy: QueuePolicy{Target: 50, Max: 20}, in: QueueInput{Current: 4, Backlog: 36, BacklogKnown: true, Rates: known(0, 10)}, want: 4},
		{name: "max delta caps growth", policy: QueuePolicy{Target: 50, Max: 20, MaxDelta: 2}, in: QueueInput{Current: 2, Backlog: 1000, BacklogKnown: true}, want: 4},
		{name: "max delta caps shrink", policy: QueuePolicy{Target: 50, Max: 20, MaxDelta: 2}, in: QueueInput{Current: 8, Backlog: 0, BacklogKnown: true}, want: 6},
		{name: "max caps growth", in: QueueInput{Current: 2, Backlog: 100000, BacklogKnown: true}, want: 20},
		{name: "min lifts", policy: QueuePolicy{Target: 50, Min: 3, Max: 20}, in: QueueInput{Current: 0, Backlog: 0, BacklogKnown: true}, want: 3},
		{
			name: "scale-down delay holds the recent demand, less one for the empty queue",
			history: []QueueInput{
				{Current: 8, Backlog: 400, BacklogKnown: true, Rates: known(80, 10)},
				{Current: 8, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)},
			},
			in:   QueueInput{Current: 8, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)},
			want: 7,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.policy
			if p.Target == 0 {
				p = policy
			}
			var st QueueState
			now := t0
			for _, h := range tc.history {
				h.Now = now
				DecideQueue(p, h, &st)
				now = now.Add(time.Second)
			}
			tc.in.Now = now
			got := DecideQueue(p, tc.in, &st)
			if got.Replicas != tc.want {
				t.Errorf("replicas = %d, want %d (%s)", got.Replicas, tc.want, got.Reason)
			}
			if !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("reason %q does not say %q", got.Reason, tc.reason)
			}
		})
	}
}

func TestScaleDownAfterDelay(t *testing.T) {
	p := QueuePolicy{Target: 50, Max: 20, ScaleDownDelay: 30 * time.Second}
	var st QueueState
	cur := int32(8)
	DecideQueue(p, QueueInput{Now: t0, Current: cur, Backlog: 400, BacklogKnown: true, Rates: known(80, 10)}, &st)
	// The queue empties and arrivals stop. The surplus that drained the
	// backlog goes at once, but the demand of 80/s (8 replicas, less the one
	// an empty queue allows) is held for the 30 s delay; then it shrinks.
	for s := 1; s <= 40; s++ {
		now := t0.Add(time.Duration(s) * time.Second)
		d := DecideQueue(p, QueueInput{Now: now, Current: cur, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, &st)
		if s <= 30 && d.Replicas < 7 {
			t.Fatalf("at %ds: shrank to %d inside the 30s delay", s, d.Replicas)
		}
		cur = d.Replicas
	}
	if cur != 0 {
		t.Errorf("after the delay replicas = %d, want 0", cur)
	}
}

func TestRates(t *testing.T) {
	tests := []struct {
		name        string
		samples     []QueueSample
		wantArrival float64
		wantService float64 // -1: unknown
	}{
		{
			name: "busy replicas measure service",
			samples: []QueueSample{
				{Time: t0, Backlog: 100, Arrived: 0, Ready: 2},
				{Time: t0.Add(time.Second), Backlog: 90, Arrived: 20, Ready: 2},
			},
			wantArrival: 20, wantService: 15,
		},
		{
			name: "idle queue does not measure service",
			samples: []QueueSample{
				{Time: t0, Backlog: 0, Arrived: 0, Ready: 4},
				{Time: t0.Add(time.Second), Backlog: 0, Arrived: 10, Ready: 4},
			},
			wantArrival: 10, wantService: -1,
		},
		{
			name: "counter reset starts over",
			samples: []QueueSample{
				{Time: t0, Backlog: 5, Arrived: 1000, Ready: 1},
				{Time: t0.Add(time.Second), Backlog: 5, Arrived: 3, Ready: 1},
			},
			wantArrival: 0, wantService: -1,
		},
		{
			name: "no replicas ready measures no service",
			samples: []QueueSample{
				{Time: t0, Backlog: 100, Arrived: 0},
				{Time: t0.Add(time.Second), Backlog: 110, Arrived: 10},
			},
			wantArrival: 10, wantService: -1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Rates
			for _, s := range tc.samples {
				r.Observe(s)
			}
			if r.Arrival != tc.wantArrival {
				t.Errorf("arrival = %v, want %v", r.Arrival, tc.wantArrival)
			}
			switch {
			case tc.wantService < 0 && r.ServiceKnown:
				t.Errorf("service known (%v), want unknown", r.Service)
			case tc.wantService >= 0 && (!r.ServiceKnown || r.Service != tc.wantService):
				t.Errorf("service = %v (known %v), want %v", r.Service, r.ServiceKnown, tc.wantService)
			}
		})
	}
}
