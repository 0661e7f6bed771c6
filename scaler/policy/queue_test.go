package policy

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func known(arrival, service float64) Rates {
	return Rates{Arrival: arrival, ArrivalKnown: true, Service: service, ServiceKnown: true}
}

// arrivalsOnly is a rate estimate that has seen arrivals but no busy replica.
func arrivalsOnly(arrival float64) Rates {
	return Rates{Arrival: arrival, ArrivalKnown: true}
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
		// fresh: the rule has not seen the member before in (otherwise it saw
		// it steady at its current replicas a minute before).
		fresh bool
		// held: what the decision says holds the member.
		held string
	}{
		{name: "steady state changes nothing", in: QueueInput{Current: 6, Consuming: 6, Backlog: 50, Waiting: 10, BacklogKnown: true, Rates: known(50, 10)}, want: 6},
		{name: "steady state inside the dead band", in: QueueInput{Current: 5, Consuming: 5, Backlog: 40, BacklogKnown: true, Rates: known(30, 10)}, want: 5},
		{name: "missing metric never scales down", in: QueueInput{Current: 5, BacklogKnown: false}, want: 5, reason: "unreadable", held: HeldUnreadable},
		{name: "missing metric never scales up", in: QueueInput{Current: 5, Backlog: 5000, BacklogKnown: false}, want: 5, held: HeldUnreadable},
		// 40/s at 10/s is 4.2 at 95% busy, plus 400 waiting above target over 30 s at 10/s = 1.3.
		{name: "rate aware grow", in: QueueInput{Current: 2, Consuming: 2, Backlog: 500, Waiting: 450, BacklogKnown: true, Rates: known(40, 10)}, want: 6, reason: "in 40.0/s"},
		{name: "messages held in flight are not drained by more replicas", in: QueueInput{Current: 5, Consuming: 5, Backlog: 150, Waiting: 0, BacklogKnown: true, Rates: known(40, 10)}, want: 5},
		{name: "no growth at or below target", in: QueueInput{Current: 2, Consuming: 2, Backlog: 50, BacklogKnown: true, Rates: known(400, 10)}, want: 2},
		// Fault 3: never current x backlog/target; a bounded step instead.
		{name: "service rate unknown: bounded step from the backlog", in: QueueInput{Current: 2, Consuming: 2, Backlog: 200, Waiting: 200, BacklogKnown: true, Rates: arrivalsOnly(50)}, want: 4, reason: "service rate unknown"},
		{name: "service rate unknown: at most max(4, current) more", in: QueueInput{Current: 5, Consuming: 5, Backlog: 100000, Waiting: 100000, BacklogKnown: true, Rates: arrivalsOnly(50)}, want: 10},
		{name: "service rate unknown: replicas on the way are capacity", in: QueueInput{Current: 10, Consuming: 2, Backlog: 5000, Waiting: 5000, BacklogKnown: true, Rates: arrivalsOnly(50)}, want: 10},
		{name: "from zero with a small backlog", in: QueueInput{Current: 0, Backlog: 3, Waiting: 3, BacklogKnown: true}, want: 1},
		{name: "from zero with a large backlog", in: QueueInput{Current: 0, Backlog: 500, Waiting: 500, BacklogKnown: true, Rates: arrivalsOnly(0)}, want: 4},
		{name: "never zero while messages wait", in: QueueInput{Current: 1, Consuming: 1, Backlog: 2, BacklogKnown: true, Rates: known(0, 10)}, want: 1},
		{name: "empty queue goes to min", policy: QueuePolicy{Target: 50, Min: 1, Max: 20}, in: QueueInput{Current: 4, Consuming: 4, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 1, held: HeldMin},
		{name: "at min with an empty queue: held by min, not by the delay", policy: QueuePolicy{Target: 50, Min: 1, Max: 20, ScaleDownDelay: 5 * time.Minute}, in: QueueInput{Current: 1, Consuming: 1, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 1, held: HeldMin},
		{name: "empty queue goes to zero", policy: QueuePolicy{Target: 50, Max: 20}, in: QueueInput{Current: 4, Consuming: 4, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 0},
		{name: "no shrink above 0.7 target", policy: QueuePolicy{Target: 50, Max: 20}, in: QueueInput{Current: 4, Consuming: 4, Backlog: 36, BacklogKnown: true, Rates: known(0, 10)}, want: 4},
		{name: "max delta caps growth", policy: QueuePolicy{Target: 50, Max: 20, MaxDelta: 2}, in: QueueInput{Current: 2, Consuming: 2, Backlog: 1000, Waiting: 1000, BacklogKnown: true, Rates: known(100, 10)}, want: 4, held: HeldMaxDelta},
		{name: "max delta caps shrink", policy: QueuePolicy{Target: 50, Max: 20, MaxDelta: 2}, in: QueueInput{Current: 8, Consuming: 8, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)}, want: 6, held: HeldMaxDelta},
		{name: "max caps growth", in: QueueInput{Current: 2, Consuming: 2, Backlog: 100000, Waiting: 100000, BacklogKnown: true, Rates: known(100, 10)}, want: 20, held: HeldMax},
		{name: "min lifts", policy: QueuePolicy{Target: 50, Min: 3, Max: 20}, in: QueueInput{Current: 0, Backlog: 0, BacklogKnown: true}, want: 3, held: HeldMin},
		// Never below demand: 60/s at 10/s needs 6 (7 at the shrink's 90%).
		{
			name: "a drained surplus goes back to demand, not below",
			history: []QueueInput{
				{Current: 12, Consuming: 12, Backlog: 600, Waiting: 550, BacklogKnown: true, Rates: known(60, 10)},
			},
			in:   QueueInput{Current: 12, Consuming: 12, Backlog: 10, BacklogKnown: true, Rates: known(60, 10)},
			want: 7, reason: "in 60.0/s",
		},
		{
			name: "scale-down delay holds the recent demand",
			history: []QueueInput{
				{Current: 10, Consuming: 10, Backlog: 30, BacklogKnown: true, Rates: known(80, 10)},
				{Current: 10, Consuming: 10, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)},
			},
			in:   QueueInput{Current: 10, Consuming: 10, Backlog: 0, BacklogKnown: true, Rates: known(0, 10)},
			want: 9, held: HeldDelay,
		},
		{
			name: "a controller that just started holds the replicas it found",
			in:   QueueInput{Current: 9, Consuming: 9, Backlog: 0, BacklogKnown: true, Rates: known(10, 10)},
			want: 9, fresh: true, held: HeldDelay,
		},
		// Wait target: 40/s at 10/s; 240 in the queue take 6 s at 4 x 10/s.
		// Each consumer holds 5 (20 in flight over 4), so a message waits
		// 0.4 s inside one: the 220 waiting must be delivered within 4.6 s,
		// 47.8/s, and arrivals join behind them, so 5 replicas (50/s)
		// deliver every message within the goal.
		{name: "wait target sizes for arrivals and the drain", policy: QueuePolicy{Wait: 5 * time.Second, Max: 20},
			in: QueueInput{Current: 4, Consuming: 4, Backlog: 240, Waiting: 220, BacklogKnown: true, Rates: known(40, 10)}, want: 5, reason: "wait 6.0s against 5s"},
		{name: "wait target met: no growth", policy: QueuePolicy{Wait: 5 * time.Second, Max: 20},
			in: QueueInput{Current: 5, Consuming: 5, Backlog: 200, Waiting: 180, BacklogKnown: true, Rates: known(40, 10)}, want: 5},
		{name: "both targets: the stricter one wins", policy: QueuePolicy{Target: 1000, Wait: 5 * time.Second, Max: 20},
			in: QueueInput{Current: 4, Consuming: 4, Backlog: 240, Waiting: 220, BacklogKnown: true, Rates: known(40, 10)}, want: 5},
		// 48/s at 10/s: the wait goal holds with 5 (the waiting delivered at
		// 50/s within 4.6 s; queueing at 96% busy under 1.5 s), the backlog
		// target asks for 48 / 9.5 + 190 / 45 / 10 = 5.5.
		{name: "both targets: a backlog target stricter than the wait", policy: QueuePolicy{Target: 50, Wait: 5 * time.Second, Max: 20},
			in: QueueInput{Current: 4, Consuming: 4, Backlog: 240, Waiting: 220, BacklogKnown: true, Rates: known(48, 10)}, want: 6},
		{name: "wait target without a rate grows while messages wait", policy: QueuePolicy{Wait: 5 * time.Second, Max: 20},
			in: QueueInput{Current: 1, Consuming: 1, Backlog: 3, Waiting: 2, BacklogKnown: true, Rates: arrivalsOnly(1)}, want: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.policy
			if p.Target == 0 && p.Wait == 0 {
				p = policy
			}
			var st QueueState
			now := t0.Add(-time.Minute)
			if !tc.fresh {
				DecideQueue(p, QueueInput{Now: now, Current: tc.in.Current, Consuming: tc.in.Consuming, BacklogKnown: true, Rates: known(0, 10)}, &st)
			}
			now = t0
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
			if got.Held != tc.held {
				t.Errorf("held by %q, want %q", got.Held, tc.held)
			}
		})
	}
}

// drive feeds the rule n ticks, a second apart, of a load whose arrivals
// are rate(s) a second, estimated as estimate(s), with the backlog held at
// backlog, from cur replicas; it returns the replicas after each tick.
func drive(p QueuePolicy, cur int32, n int, backlog int64, rate, estimate func(s int) float64) []int32 {
	var st QueueState
	arrived := int64(0)
	out := make([]int32, n)
	for s := range n {
		arrived += int64(rate(s))
		cur = DecideQueue(p, QueueInput{Now: t0.Add(time.Duration(s) * time.Second), Current: cur, Consuming: cur,
			Backlog: backlog, BacklogKnown: true, Arrived: arrived, Rates: known(estimate(s), 10)}, &st).Replicas
		out[s] = cur
	}
	return out
}

// The shrinks a load allows: when replicas go, and to how many.
func TestShrinksFollowTheLoad(t *testing.T) {
	delay30 := QueuePolicy{Target: 50, Max: 50, ScaleDownDelay: 30 * time.Second}
	tests := []struct {
		name     string
		policy   QueuePolicy
		cur      int32
		n        int
		backlog  int64
		rate     func(s int) float64
		estimate float64 // the estimate as a share of the rate
		check    func(replicas []int32) error
	}{
		{
			// A clear fall: the demand of 80/s is held for half the delay
			// (to within a bucket of the window), then the replicas go.
			name: "arrivals stop after 20 s at 80/s", policy: delay30, cur: 10, n: 41,
			rate: func(s int) float64 {
				if s < 20 {
					return 80
				}
				return 0
			},
			estimate: 1,
			check: func(r []int32) error {
				for s := range 20 + 14 {
					if r[s] < 9 {
						return fmt.Errorf("at %ds: shrank to %d inside half the delay", s, r[s])
					}
				}
				if r[40] != 0 {
					return fmt.Errorf("after the delay: %d replicas, want 0", r[40])
				}
				return nil
			},
		},
		{
			// A drained surplus at a flat load goes back once it has been
			// above every demand of two delays, and not before.
			name: "a surplus at a flat 60/s", policy: QueuePolicy{Target: 50, Max: 20, ScaleDownDelay: 10 * time.Second}, cur: 10, n: 26,
			rate:     func(int) float64 { return 60 },
			estimate: 1,
			check: func(r []int32) error {
				for s := range 19 {
					if r[s] != 10 {
						return fmt.Errorf("at %ds: %d replicas, want 10 held for two delays", s, r[s])
					}
				}
				if r[25] != 7 { // 60/s at the shrink's 90%
					return fmt.Errorf("after two delays: %d replicas, want 7", r[25])
				}
				return nil
			},
		},
		{
			// A load rising slowly, its estimate lagging, the backlog low:
			// no replica given back that will be needed again.
			name: "a slow rise", policy: delay30, cur: 12, n: 120, backlog: 10,
			rate:     func(s int) float64 { return 50 + 0.5*float64(s) },
			estimate: 0.9,
			check: func(r []int32) error {
				for s := 1; s < len(r); s++ {
					if r[s] < r[s-1] {
						return fmt.Errorf("at %ds: shrank %d -> %d on a rising load", s, r[s-1], r[s])
					}
				}
				return nil
			},
		},
		{
			// 140/s down to 20/s at 150 s and back, a sine's trough: the
			// shrinks happen while it falls, none once it may have turned.
			name: "a trough", policy: delay30, cur: 15, n: 300, backlog: 10,
			rate:     func(s int) float64 { return 80 + 60*math.Cos(2*math.Pi*float64(s)/300) },
			estimate: 1,
			check: func(r []int32) error {
				last := -1
				for s := 1; s < len(r); s++ {
					if r[s] < r[s-1] {
						last = s
					}
				}
				if last < 0 || last >= 150 {
					return fmt.Errorf("last shrink at %ds, want one and before the trough at 150s", last)
				}
				return nil
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := drive(tc.policy, tc.cur, tc.n, tc.backlog, tc.rate, func(s int) float64 { return tc.estimate * tc.rate(s) })
			if err := tc.check(r); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestLearnsWhenAShrinkIsTakenBack: a shrink to N at a load that N cannot
// hold (the backlog rises above target) is taken back, and the next shrink
// at the same load stops above N.
func TestLearnsWhenAShrinkIsTakenBack(t *testing.T) {
	p := QueuePolicy{Target: 50, Max: 50, ScaleDownDelay: 5 * time.Second}
	var st QueueState
	in := func(s int, cur int32, backlog int64) QueueInput {
		return QueueInput{Now: t0.Add(time.Duration(s) * time.Second), Current: cur, Consuming: cur, Backlog: backlog, Waiting: backlog / 2,
			Arrived: int64(58 * s), BacklogKnown: true, Rates: known(58, 10)}
	}
	cur := int32(9)
	s := 0
	for ; s < 12; s++ { // drained: gives back to 7 (58/s at 90%) after two delays at a flat load
		cur = DecideQueue(p, in(s, cur, 5), &st).Replicas
	}
	if cur != 7 {
		t.Fatalf("after the drain replicas = %d, want 7", cur)
	}
	cur = DecideQueue(p, in(s, cur, 1000), &st).Replicas // 7 could not hold it
	if cur <= 7 {
		t.Fatalf("backlog above target at 7: replicas = %d, want more", cur)
	}
	for s++; s < 30; s++ {
		cur = DecideQueue(p, in(s, cur, 5), &st).Replicas
		if cur <= 7 {
			t.Fatalf("at %ds: shrank to %d again at the same load", s, cur)
		}
	}
}

func TestWindowIsBounded(t *testing.T) {
	p := QueuePolicy{Target: 50, Max: 20, ScaleDownDelay: 24 * time.Hour}
	var st QueueState
	for s := range 200000 {
		DecideQueue(p, QueueInput{Now: t0.Add(time.Duration(s) * time.Second), Current: 5, Consuming: 5, Backlog: 10, BacklogKnown: true, Rates: known(40, 10)}, &st)
	}
	if st.window.size > windowBuckets {
		t.Errorf("window holds %d buckets, want at most %d", st.window.size, windowBuckets)
	}
}

func TestRates(t *testing.T) {
	sec := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name        string
		samples     []QueueSample
		wantArrival float64 // -1: unknown
		wantService float64 // -1: unknown
	}{
		{
			name: "busy replicas measure service",
			samples: []QueueSample{
				{Time: sec(0), Backlog: 100, Waiting: 90, Arrived: 0, Consuming: 2},
				{Time: sec(1), Backlog: 90, Waiting: 80, Arrived: 20, Consuming: 2},
			},
			wantArrival: -1, wantService: 15,
		},
		{
			// Fault 2: starved replicas hold messages in flight; they are not slow.
			name: "messages only in flight do not measure service",
			samples: []QueueSample{
				{Time: sec(0), Backlog: 10, Waiting: 0, Arrived: 0, Consuming: 100},
				{Time: sec(1), Backlog: 10, Waiting: 0, Arrived: 100, Consuming: 100},
			},
			wantArrival: -1, wantService: -1,
		},
		{
			name: "service is per consuming replica",
			samples: []QueueSample{
				{Time: sec(0), Backlog: 500, Waiting: 490, Arrived: 0, Consuming: 2},
				{Time: sec(1), Backlog: 480, Waiting: 470, Arrived: 0, Consuming: 2},
			},
			wantArrival: -1, wantService: 10,
		},
		{
			name: "counter reset starts over",
			samples: []QueueSample{
				{Time: sec(0), Backlog: 5, Arrived: 1000, Consuming: 1},
				{Time: sec(1), Backlog: 5, Arrived: 3, Consuming: 1},
			},
			wantArrival: -1, wantService: -1,
		},
		{
			name: "no replica consuming measures no service",
			samples: []QueueSample{
				{Time: sec(0), Backlog: 100, Waiting: 100, Arrived: 0},
				{Time: sec(1), Backlog: 110, Waiting: 110, Arrived: 10},
			},
			wantArrival: -1, wantService: -1,
		},
		{
			// Fault 1: a one-off burst is backlog to drain, not a rate to serve.
			name: "a burst is not a rate",
			samples: []QueueSample{
				{Time: sec(0), Arrived: 0},
				{Time: sec(1), Arrived: 1100},
				{Time: sec(2), Arrived: 1200},
				{Time: sec(3), Arrived: 1300},
				{Time: sec(4), Arrived: 1400},
			},
			wantArrival: 100, wantService: -1,
		},
		{
			name: "a rate that steps up and stays is believed within three intervals",
			samples: []QueueSample{
				{Time: sec(0), Arrived: 0}, {Time: sec(1), Arrived: 10}, {Time: sec(2), Arrived: 20}, {Time: sec(3), Arrived: 30},
				{Time: sec(4), Arrived: 30 + 200}, {Time: sec(5), Arrived: 30 + 400}, {Time: sec(6), Arrived: 30 + 600},
			},
			wantArrival: 200, wantService: -1,
		},
		{
			name: "a producer that publishes in batches is read at its average",
			samples: []QueueSample{
				{Time: sec(0), Arrived: 0}, {Time: sec(1), Arrived: 200}, {Time: sec(2), Arrived: 200}, {Time: sec(3), Arrived: 400},
				{Time: sec(4), Arrived: 400}, {Time: sec(5), Arrived: 600}, {Time: sec(6), Arrived: 600}, {Time: sec(7), Arrived: 800},
				{Time: sec(8), Arrived: 800}, {Time: sec(9), Arrived: 1000}, {Time: sec(10), Arrived: 1000},
			},
			wantArrival: 100, wantService: -1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Rates
			for _, s := range tc.samples {
				r.Observe(s)
			}
			switch {
			case tc.wantArrival < 0 && r.ArrivalKnown:
				t.Errorf("arrival known (%v), want unknown", r.Arrival)
			case tc.wantArrival >= 0 && (!r.ArrivalKnown || r.Arrival != tc.wantArrival):
				t.Errorf("arrival = %v (known %v), want %v", r.Arrival, r.ArrivalKnown, tc.wantArrival)
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

// The guard does not trust the estimator: with the service rate estimated
// at four replicas' throughput (the stall on a rising load), a backlog that
// grows above its target while the replicas stay put corrects the rate to
// what they deliver, and the rule grows; with a right estimate and the
// replicas held at max-replicas, nothing is corrected.
func TestGuardCorrectsAnEstimateThatFallsBehind(t *testing.T) {
	tests := []struct {
		name        string
		estimate    float64
		max         int32
		wantFix     bool
		wantAtLeast int32
	}{
		{name: "a group's throughput taken as one replica's", estimate: 32, max: 40, wantFix: true, wantAtLeast: 7},
		{name: "a right estimate held at max", estimate: 8, max: 4, wantFix: false, wantAtLeast: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := QueuePolicy{Target: 30, Min: 1, Max: tc.max, ScaleDownDelay: 30 * time.Second}
			var s MemberState
			// 4 replicas, each busy, delivering 8/s; 50/s arrive.
			backlog, arrived := int64(100), int64(0)
			var d Decision
			s.Rates.Service, s.Rates.ServiceKnown = tc.estimate, true
			for i := range 8 {
				d = s.Step(p, t0.Add(time.Duration(i)*time.Second), 4, 4,
					QueueReading{Backlog: backlog, Waiting: backlog - 16, Arrived: arrived, Consumers: 4}, true)
				if d.Replicas != 4 {
					break
				}
				arrived += 50
				backlog += 50 - 32
			}
			if got := d.Corrected != (Correction{}); got != tc.wantFix {
				t.Fatalf("corrected = %+v, want a correction: %v (decision %+v)", d.Corrected, tc.wantFix, d)
			}
			if tc.wantFix && math.Abs(d.Corrected.Delivered-8) > 0.5 {
				t.Errorf("delivered = %.2f/s, want 8/s per replica", d.Corrected.Delivered)
			}
			if d.Replicas < tc.wantAtLeast {
				t.Errorf("replicas = %d, want at least %d (50/s at 8/s a replica): %s", d.Replicas, tc.wantAtLeast, d.Reason)
			}
		})
	}
}

// A server that refreshes its figures every 5 s (RabbitMQ's statistics, a
// Prometheus scrape) is read every second: four reads in five show the
// figures of the one before, dated as before. The guard must measure over
// the server's intervals, not start over at each repeat, or it never sees
// five behind intervals in a row and an estimate four times too high
// stands while the backlog runs away.
func TestGuardSeesThroughRepeatedFigures(t *testing.T) {
	p := QueuePolicy{Target: 30, Min: 1, Max: 4, ScaleDownDelay: 30 * time.Second}
	var s MemberState
	s.Rates.Service, s.Rates.ServiceKnown = 32, true
	backlog, arrived := int64(100), int64(0)
	var at, earliest time.Time
	var d Decision
	for i := range 40 {
		now := t0.Add(time.Duration(i) * time.Second)
		if i%5 == 0 { // the server's new figures: 5 s of 50/s in, 4 x 8/s done
			if i > 0 {
				arrived += 5 * 50
				backlog += 5 * (50 - 32)
			}
			at, earliest = now, now.Add(-time.Second)
		}
		d = s.Step(p, now, 4, 4, QueueReading{Backlog: backlog, Waiting: backlog - 16, Arrived: arrived, Consumers: 4, At: at, Earliest: earliest}, true)
		if d.Corrected != (Correction{}) {
			break
		}
	}
	if d.Corrected == (Correction{}) {
		t.Fatalf("no correction after 40 s of a backlog growing 90 every 5 s at max replicas, estimate 32/s: %+v", d)
	}
	if math.Abs(d.Corrected.Delivered-8) > 0.5 {
		t.Errorf("delivered = %.2f/s, want 8/s per replica", d.Corrected.Delivered)
	}
}

// Figures a server refreshes every 5 s, at times that wander within a
// second (its own timer), are first seen at the next read a second
// apart: the interval between the reads that showed them is up to a
// second shorter or longer than the one the server counted. Four replicas
// of 10/s each keep up with 39/s, never quite busy: each interval can only
// raise the rate, so one counted short must not pass for replicas faster
// than they are.
func TestRatesOfFiguresSeenLate(t *testing.T) {
	var r Rates
	r.Service, r.ServiceKnown = 10, true
	// (0.01 then 0.0: counted 4.99 s apart, read 4 s apart.)
	wander := []float64{0.97, 0.01, 0.0, 0.5, 0.99, 0.02, 0.98, 0.03, 0.6, 0.95}
	arrived, prevTrue := 0.0, 0.0
	for k := range 60 {
		taken := 5*float64(k) + wander[k%len(wander)] // when the server counted
		arrived += 39 * (taken - prevTrue)
		prevTrue = taken
		seen := math.Ceil(taken) // the first read after
		at := t0.Add(time.Duration(seen * float64(time.Second)))
		r.Observe(QueueSample{Time: at, Earliest: at.Add(-time.Second), Backlog: 8, Waiting: 0, Arrived: int64(arrived), Consuming: 4})
	}
	if r.Service > 10.2 {
		t.Errorf("service = %.2f/s per replica, want at most 10.2: replicas of 10/s taken for faster", r.Service)
	}
}

// A load rising by 0.6 msg/s every second, counted by a server that
// refreshes its figures every 5 s: the arrival estimate trails the true
// rate by about 10 s of the rise (a 5 s interval's own middle, and the
// highest of three dropped as a possible burst), not by half of ten 5 s
// intervals (25 s). Over one-second intervals nothing changes (5 s).
func TestArrivalsOverLongIntervalsKeepUpWithARise(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval float64
		maxLag   float64 // in seconds of the rise
	}{
		{"5 s figures", 5, 11},
		{"1 s figures", 1, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Rates
			const slope = 0.6
			arrived := 0.0
			var now float64
			for now = 0; now <= 120; now += tc.interval {
				// What arrived over the interval ending now: the rate at its middle.
				if now > 0 {
					arrived += slope * (now - tc.interval/2) * tc.interval
				}
				r.Observe(QueueSample{Time: t0.Add(time.Duration(now * float64(time.Second))), Arrived: int64(arrived), Consuming: 1})
			}
			now -= tc.interval
			if lag := (slope*now - r.Arrival) / slope; lag > tc.maxLag {
				t.Errorf("arrival %.1f/s at %.0f s for a true %.1f/s: %.1f s behind the rise, want at most %.0f", r.Arrival, now, slope*now, lag, tc.maxLag)
			}
		})
	}
}

// A steady 40/s counted on one 5 s timer and read through intervals dated
// by another: an interval holds no new count of arrivals, the next two.
// The estimate stays near 40/s; it read 20/s when the low intervals were
// kept, and a burst on RabbitMQ was drained by too few replicas.
func TestArrivalsThroughAliasedIntervals(t *testing.T) {
	var r Rates
	arrived := int64(0)
	counts := []int64{200, 0, 400, 200, 200, 0, 400, 200}
	for i := range 40 {
		if i > 0 {
			arrived += counts[i%len(counts)]
		}
		r.Observe(QueueSample{Time: t0.Add(time.Duration(5*i) * time.Second), Arrived: arrived, Consuming: 1})
		if i >= 12 && (r.Arrival < 36 || r.Arrival > 44) {
			t.Fatalf("interval %d: arrival %.1f/s, want about 40", i, r.Arrival)
		}
	}
}

// An unreadable queue holds the member; with a fallback, once it has been
// unreadable for FallbackAfter (counted from the last good read) the
// member goes to FallbackReplicas at once (past MaxDelta), until the queue
// is read again; a new run of failures waits FallbackAfter again.
func TestFallback(t *testing.T) {
	p := QueuePolicy{Target: 50, Max: 20, MaxDelta: 1, ScaleDownDelay: 30 * time.Second, FallbackReplicas: 8, FallbackAfter: 20 * time.Second}
	var st QueueState
	unreadable := func(at time.Duration, cur int32) Decision {
		return DecideQueue(p, QueueInput{Now: t0.Add(at), Current: cur}, &st)
	}
	steps := []struct {
		at       time.Duration
		read     bool
		want     int32
		fallback bool
	}{
		{0, false, 2, false},
		{19 * time.Second, false, 2, false},
		{20 * time.Second, false, 8, true},
		{40 * time.Second, false, 8, true},
		{41 * time.Second, true, 8, false},  // read again: the rule decides from 8 (backlog at target: no change)
		{42 * time.Second, false, 8, false}, // unknown since the read at 41 s
		{60 * time.Second, false, 8, false},
		{61 * time.Second, false, 8, true},
	}
	cur := int32(2)
	for _, s := range steps {
		var d Decision
		if s.read {
			d = DecideQueue(p, QueueInput{Now: t0.Add(s.at), Current: cur, BacklogKnown: true, Backlog: 50, Rates: known(8, 1)}, &st)
		} else {
			d = unreadable(s.at, cur)
		}
		if d.Replicas != s.want || d.Fallback != s.fallback {
			t.Fatalf("at %s (read %v): %d replicas, fallback %v (%s); want %d, %v", s.at, s.read, d.Replicas, d.Fallback, d.Reason, s.want, s.fallback)
		}
		if s.fallback && d.Held != HeldFallback {
			t.Errorf("at %s: held %q, want %q", s.at, d.Held, HeldFallback)
		}
		cur = d.Replicas
	}
	// Without a fallback an unreadable queue holds however long.
	p.FallbackAfter, st = 0, QueueState{}
	if d := unreadable(time.Hour, 3); d.Replicas != 3 || d.Held != HeldUnreadable {
		t.Errorf("without a fallback, an hour unreadable: %d replicas, held %q; want 3, %q", d.Replicas, d.Held, HeldUnreadable)
	}
}

// Rate limits hold in every window of their period: 4/60s never grows
// more than 4 from the fewest replicas of the last minute, percent
// limits count from the window's fewest (most, for a fall) with at least
// one, and a limit never turns a change around.
func TestRateLimits(t *testing.T) {
	up := annotations.RateLimit{N: 4, Period: time.Minute}
	var tr trail
	steps := []struct {
		at        time.Duration
		cur, want int32
		got       int32
	}{
		{0, 1, 20, 5},
		{time.Second, 5, 20, 5},
		{59 * time.Second, 5, 20, 5},
		{61 * time.Second, 5, 20, 9},
		{62 * time.Second, 9, 3, 3},     // a fall: not this limit's
		{63 * time.Second, 3, 20, 7},    // fewest in the window is 3
		{64 * time.Second, 7, 20, 7},    // written: 7 from 64 s
		{123 * time.Second, 7, 20, 7},   // 3 still in force at the window's start
		{124 * time.Second, 7, 20, 11},  // 3 left the window
		{126 * time.Second, 11, 11, 11}, // no change asked: none made
	}
	for _, s := range steps {
		now := t0.Add(s.at)
		tr.observe(now, s.cur, time.Minute)
		if got := tr.limit(now, s.cur, s.want, up, annotations.RateLimit{}); got != s.got {
			t.Errorf("up 4/60s at %s from %d wanting %d: %d, want %d (trail %v)", s.at, s.cur, s.want, got, s.got, tr)
		}
	}
	pct := annotations.RateLimit{N: 100, Percent: true, Period: 15 * time.Second}
	down := annotations.RateLimit{N: 50, Percent: true, Period: 30 * time.Second}
	for _, c := range []struct {
		cur, want, got int32
		up, down       annotations.RateLimit
	}{
		{2, 20, 4, pct, down},
		{0, 20, 1, pct, down}, // at least one
		{3, 20, 6, pct, down},
		{10, 0, 5, pct, down},
		{1, 0, 0, pct, down}, // half of one, rounded up: one
		{10, 0, 7, up, annotations.RateLimit{N: 3, Period: time.Minute}},
	} {
		var tr trail
		tr.observe(t0, c.cur, time.Minute)
		if got := tr.limit(t0, c.cur, c.want, c.up, c.down); got != c.got {
			t.Errorf("from %d wanting %d under %v up, %v down: %d, want %d", c.cur, c.want, c.up, c.down, got, c.got)
		}
	}
	// In the rule: held by the limit, and the trail stays bounded.
	p := QueuePolicy{Target: 10, Max: 40, ScaleDownDelay: time.Second, ScaleUpLimit: up}
	var st QueueState
	d := DecideQueue(p, QueueInput{Now: t0, Current: 1, BacklogKnown: true, Backlog: 1000, Rates: known(100, 1)}, &st)
	if d.Replicas != 5 || d.Held != HeldRateLimit {
		t.Errorf("a burst under 4/60s: %d replicas, held %q; want 5, %q", d.Replicas, d.Held, HeldRateLimit)
	}
	for i := range 2 * maxTrail {
		st.trail.observe(t0.Add(time.Duration(i)*time.Millisecond), int32(i%7), time.Hour)
	}
	if len(st.trail) > maxTrail {
		t.Errorf("trail of %d samples, want at most %d", len(st.trail), maxTrail)
	}
}
