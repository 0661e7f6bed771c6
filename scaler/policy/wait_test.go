package policy

import (
	"testing"
	"time"
)

func TestWaitReplicasFromQueueing(t *testing.T) {
	tests := []struct {
		name              string
		arrival, service  float64
		budget            time.Duration
		want, atUtil95Was int32
	}{
		// 1.9 a second at 1 a second: two replicas are 95% busy, and their
		// p95 wait is C(2, 1.9) = 0.93: ln(0.93/0.05) / (2 - 1.9) = 29 s.
		// Three hold it at 1.7 s.
		{name: "few slow replicas need headroom", arrival: 1.9, service: 1, budget: 5 * time.Second, want: 3, atUtil95Was: 2},
		// 1,900 a second at 10: at 194 replicas (98% busy) a message waits
		// under 0.1 s at p95; 95% busy would ask for 200.
		{name: "many replicas need almost none", arrival: 1900, service: 10, budget: 5 * time.Second, want: 194, atUtil95Was: 200},
		// 100 a second at 10: 10 are saturated, 11 wait e^-50 s.
		{name: "the bench's load", arrival: 100, service: 10, budget: 4600 * time.Millisecond, want: 11, atUtil95Was: 11},
		// 1 a second at 0.5: 3 replicas wait 4.4 s at p95, 4 wait 1.25 s.
		{name: "a tight goal on a slow service", arrival: 1, service: 0.5, budget: 2 * time.Second, want: 4, atUtil95Was: 3},
		{name: "no arrivals", arrival: 0, service: 10, budget: 5 * time.Second, want: 0, atUtil95Was: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := waitReplicas(tc.arrival, tc.service, tc.budget, maxWaitUtilization); got != tc.want {
				t.Errorf("waitReplicas = %d, want %d", got, tc.want)
			}
			if old := ceilReplicas(tc.arrival / (tc.service * maxUtilization)); old != tc.atUtil95Was {
				t.Errorf("at 95%% busy %d, the test says %d", old, tc.atUtil95Was)
			}
		})
	}
}

// A consumer that holds 5 messages at 10 a second keeps a delivered
// message 0.4 s: that much less of the goal is left for the queue.
func TestWaitBudgetTakesOffPrefetch(t *testing.T) {
	if got := waitBudget(5*time.Second, 5, 10); got != 4600*time.Millisecond {
		t.Errorf("budget = %v, want 4.6s", got)
	}
	// 20 held at 1 a second would leave nothing: a fifth of the goal stays.
	if got := waitBudget(5*time.Second, 20, 1); got != time.Second {
		t.Errorf("budget = %v, want 1s", got)
	}
	var w waitState
	w.observe(t0, 100, 240, 220, 4, 5*time.Second) // 20 in flight over 4
	if w.held != 5 {
		t.Errorf("held = %v, want 5", w.held)
	}
	w.observe(t0.Add(time.Second), 200, 20, 0, 4, 5*time.Second) // nothing waits: not full, not learnt from
	if w.held != 5 {
		t.Errorf("held = %v after a read with nothing waiting, want still 5", w.held)
	}
}

// A burst of 1,000 that arrived between 2.5 and 2 s ago, 100/s arriving
// all along, 1 s for new replicas to start, 40 delivered meanwhile by
// the replicas consuming.
func TestDrainRateForABurst(t *testing.T) {
	var w waitState
	const wait = 5 * time.Second
	arrived := int64(0)
	for at := -4 * time.Second; at <= 0; at += 500 * time.Millisecond {
		if at == -2*time.Second {
			arrived += 1000
		}
		w.observe(t0.Add(at), arrived, 0, 0, 0, wait)
		arrived += 50
	}
	arrived -= 50 // 1,400 at t0
	// 1,150 wait: the burst but for 100 delivered, and 200 that came after it.
	waiting := int64(1150)
	budget := waitBudget(wait, 5, 10)
	got := w.drainRate(t0, arrived, waiting, 100, budget, time.Second, 40)
	// The burst's last message has 1,150 - 200 ahead of it and is 2.25 s
	// old on average: 1.35 s are left once the new replicas have started,
	// for 950 - 40: 674/s.
	if got < 670 || got > 678 {
		t.Errorf("drain rate = %.0f/s, want 674/s", got)
	}
	// A start-up longer than the goal leaves no message waiting now on
	// time: the queue is still drained for the first to arrive after it.
	got = w.drainRate(t0, arrived, waiting, 100, budget, 10*time.Second, 400)
	if want := (1150 + 100*10 - 400) / budget.Seconds(); got < want-1 || got > want+1 {
		t.Errorf("drain rate with a 10 s start-up = %.0f/s, want %.0f/s", got, want)
	}
}

// The rule's wait goal on a queue whose consumers are all busy: it grows
// before messages have waited the goal, as soon as the model predicts a
// miss.
func TestWaitGoalGrowsBeforeTheGoalIsMissed(t *testing.T) {
	p := QueuePolicy{Wait: 5 * time.Second, Max: 50}
	var st QueueState
	// 120/s arriving at 10/s each: 12 replicas' worth on 10. The queue holds
	// 100 (a second's wait at 100/s), far under the goal.
	in := QueueInput{Now: t0, Current: 10, Consuming: 10, Backlog: 150, Waiting: 100, Arrived: 10000, BacklogKnown: true, Rates: known(120, 10)}
	d := DecideQueue(p, in, &st)
	if d.Replicas < 13 {
		t.Errorf("replicas = %d (%s), want at least 13: 120/s needs 12 and some headroom", d.Replicas, d.Reason)
	}
}
