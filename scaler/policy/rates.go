package policy

import (
	"math"
	"slices"
	"time"
)

// QueueSample is one read of a member's queues.
type QueueSample struct {
	Time time.Time
	// Backlog is waiting + in flight + deferred messages.
	Backlog int64
	// Waiting is the part of the backlog ready to be delivered (NSQ channel
	// depth): messages no consumer holds yet.
	Waiting int64
	// Arrived is the cumulative count of messages put on the channel (NSQ
	// message_count); it only grows until nsqd restarts.
	Arrived int64
	// Consuming is how many replicas hold a connection to the queue.
	Consuming int32
}

// Rates estimates a queue's arrival rate and the service rate of one
// consuming replica from successive samples.
//
// Arrival is a trimmed mean of the per-interval rates of the last
// arrivalWindow intervals, raised to the lowest of the last stepIntervals
// when all of them are well above it (by stepFactor): a one-off burst (one or two intervals with
// a step in the count) is trimmed away and stays backlog to drain, while a
// rate that steps up and stays is believed within stepIntervals ticks.
//
// Service is measured only over intervals where messages were waiting at
// both ends (not merely in flight: NSQ consumers always hold messages, so a
// starved replica is not a slow one), per replica consuming at both ends.
// Intervals where nothing waited only raise it: each consuming replica
// served at least its share of what left the queue.
type Rates struct {
	last    QueueSample
	started bool
	// in holds the last n per-interval arrival rates, oldest first.
	in [arrivalWindow]float64
	n  int
	// Arrival is messages per second; valid when ArrivalKnown.
	Arrival      float64
	ArrivalKnown bool
	// Service is messages per second per consuming replica; valid when ServiceKnown.
	Service      float64
	ServiceKnown bool
}

const (
	// arrivalWindow is how many intervals the arrival rate is averaged over.
	arrivalWindow = 10
	// stepIntervals is how many intervals in a row, each above the average
	// by stepFactor, make a new rate rather than a burst or noise.
	stepIntervals = 3
	stepFactor    = 1.2
	// serviceTau is the time constant of the service rate's smoothing.
	serviceTau = 5 * time.Second
)

// Observe folds a sample into the estimate.
func (r *Rates) Observe(s QueueSample) {
	if !r.started {
		r.last, r.started = s, true
		return
	}
	dt := s.Time.Sub(r.last.Time).Seconds()
	if dt <= 0 {
		return
	}
	arrived := s.Arrived - r.last.Arrived
	if arrived < 0 {
		// Counter reset (nsqd restarted): start over from this sample, keeping
		// what was learnt of the consumers.
		*r = Rates{last: s, started: true, Service: r.Service, ServiceKnown: r.ServiceKnown}
		return
	}
	r.observeArrival(float64(arrived) / dt)

	done := float64(arrived - (s.Backlog - r.last.Backlog))
	// Only replicas consuming at both ends count: one that connected during
	// the interval did some of the work in part of it, which makes the
	// estimate err high (fewer replicas, then growth), never low (an
	// overshoot).
	consuming := min(s.Consuming, r.last.Consuming)
	if done >= 0 && consuming > 0 {
		per := done / dt / float64(consuming)
		switch {
		case r.last.Waiting > 0 && s.Waiting > 0:
			// Every consuming replica was busy for the whole interval.
			if r.ServiceKnown {
				r.Service += (1 - math.Exp(-dt/serviceTau.Seconds())) * (per - r.Service)
			} else if per > 0 {
				r.Service, r.ServiceKnown = per, true
			}
		case r.ServiceKnown:
			r.Service = max(r.Service, per)
		}
	}
	r.last = s
}

func (r *Rates) observeArrival(rate float64) {
	if r.n == arrivalWindow {
		copy(r.in[:], r.in[1:])
		r.n--
	}
	r.in[r.n] = rate
	r.n++
	n := r.n
	if n < 2 {
		return // one interval cannot tell a burst from a rate
	}
	sorted := r.in // a copy
	slices.Sort(sorted[:n])
	// Drop the highest fifth (at least one) and the lowest fifth.
	k := n / 5
	kept := sorted[k : n-max(1, k)]
	sum := 0.0
	for _, v := range kept {
		sum += v
	}
	est := sum / float64(len(kept))
	if n >= stepIntervals {
		if step := slices.Min(r.in[n-stepIntervals : n]); step > stepFactor*est {
			est = step
		}
	}
	r.Arrival, r.ArrivalKnown = est, true
}
