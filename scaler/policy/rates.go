package policy

import (
	"math"
	"slices"
	"time"
)

// QueueSample is one read of a member's queues.
type QueueSample struct {
	Time time.Time
	// Earliest: the figures may have been taken as early as this (a server
	// that refreshes them on its own schedule); zero: at Time.
	Earliest time.Time
	// Backlog is waiting + in flight + deferred messages.
	Backlog int64
	// Waiting is the part of the backlog ready to be delivered (NSQ channel
	// depth): messages no consumer holds yet.
	Waiting int64
	// Arrived is the cumulative count of messages put on the channel (NSQ
	// message_count); it only grows until nsqd restarts.
	Arrived int64
	// Completed is the cumulative count of messages finished, when the
	// server counts it (CompletedKnown).
	Completed      int64
	CompletedKnown bool
	// Consuming is how many replicas hold a connection to the queue.
	Consuming int32
}

// completed is what the consumers finished between prev and s: the
// server's own count when both have it, else what arrived less the
// backlog's growth.
func completed(prev, s QueueSample) float64 {
	if prev.CompletedKnown && s.CompletedKnown && s.Completed >= prev.Completed {
		return float64(s.Completed - prev.Completed)
	}
	return float64((s.Arrived - prev.Arrived) - (s.Backlog - prev.Backlog))
}

// Rates estimates a queue's arrival rate and the service rate of one
// consuming replica from successive samples.
//
// Arrival is a trimmed mean of the per-interval rates of the last
// arrivalWindow intervals, raised to the lowest of the last stepIntervals
// when all of them are well above it (by stepFactor), lowered to the highest
// when all are well below: a one-off burst (one or two intervals with a
// step in the count) is trimmed away and stays backlog to drain, while a
// rate that steps up or down and stays is believed within stepIntervals
// ticks.
//
// Service is measured only over intervals where the replicas were busy
// throughout (see busy: messages waiting undelivered, not merely in flight:
// NSQ consumers always hold messages, so a starved replica is not a slow
// one) and the same replicas consumed at both ends; a busy interval where
// replicas joined or left only bounds it. Intervals where they were not
// busy only raise it: each consuming replica served at least its share of
// what left the queue, less the count's noise.
type Rates struct {
	last    QueueSample
	started bool
	// in holds the last n per-interval arrival rates, oldest first, and
	// dts their intervals' lengths in seconds.
	in, dts [arrivalWindow]float64
	n       int
	// Arrival is messages per second; valid when ArrivalKnown.
	Arrival      float64
	ArrivalKnown bool
	// Service is messages per second per consuming replica; valid when ServiceKnown.
	Service      float64
	ServiceKnown bool
	// Spread is the relative uncertainty of Service: 1/sqrt of the messages
	// it was measured on; 0 when exact.
	Spread   float64
	measured float64
	// Joined is how many more replicas consumed at the last sample than at
	// the one before: they worked part of the last interval only.
	Joined int32
}

const (
	// arrivalWindow is how many intervals the arrival rate is averaged
	// over, at most, and arrivalSpan about how long they cover: intervals
	// longer than a second (a server that refreshes its figures every 5 s)
	// are averaged over fewer, at least stepIntervals, or the estimate would
	// trail a rising load by half of ten long intervals.
	arrivalWindow = 10
	arrivalSpan   = 10.0 // seconds
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
		*r = Rates{last: s, started: true, Service: r.Service, ServiceKnown: r.ServiceKnown, Spread: r.Spread, measured: r.measured}
		return
	}
	r.observeArrival(float64(arrived)/dt, dt)
	r.Joined = max(0, s.Consuming-r.last.Consuming)

	done := completed(r.last, s)
	// A replica that connected or left during the interval worked part of
	// it: the replica-seconds of work lie between lo and hi consuming
	// replicas for the whole interval, and only an interval where they are
	// the same measures the rate; the others bound it.
	lo, hi := min(s.Consuming, r.last.Consuming), max(s.Consuming, r.last.Consuming)
	// Figures a server refreshes on its own schedule were taken some time
	// in [Earliest, Time]: the interval they span is at most long and at
	// least short. A bound on the rate takes the interval that makes it
	// safe, or one read a second late would ratchet the rate up.
	long := s.Time.Sub(r.last.earliest()).Seconds()
	short := s.earliest().Sub(r.last.Time).Seconds()
	if done >= 0 && hi > 0 {
		// The count's noise: a replica's messages finish at random times.
		noise := 2 * math.Sqrt(done)
		busy := r.busy(s, dt, hi)
		switch {
		case busy && lo == hi:
			// Every consuming replica was busy for the whole interval.
			per := done / dt / float64(hi)
			r.measured += done
			r.Spread = 1 / math.Sqrt(max(r.measured, 1))
			if r.ServiceKnown {
				r.Service += (1 - math.Exp(-dt/serviceTau.Seconds())) * (per - r.Service)
			} else if per > 0 {
				r.Service, r.ServiceKnown = per, true
			}
		case busy && r.ServiceKnown && lo > 0:
			// Busy, but the count changed: the rate lies between the bounds.
			upper := math.Inf(1)
			if short > 0 {
				upper = (done + noise) / short / float64(lo)
			}
			r.Service = min(max(r.Service, (done-noise)/long/float64(hi)), upper)
		case r.ServiceKnown:
			// Some replicas idled at times: each could do at least its share,
			// counted low by the noise, or a lucky interval would ratchet
			// the rate up.
			r.Service = max(r.Service, (done-noise)/long/float64(hi))
		}
	}
	r.last = s
}

// earliest is how old the sample's figures may be.
func (s QueueSample) earliest() time.Time {
	if s.Earliest.IsZero() {
		return s.Time
	}
	return s.Earliest
}

// busy reports whether n consuming replicas were busy for the whole
// interval that ends with s. Before the rate is known, messages must have
// waited at both ends. After, enough must have waited at the start to keep
// them busy however fast they turned out to be: an interval chosen because
// messages still waited at its end is one where they happened to be slow.
func (r *Rates) busy(s QueueSample, dt float64, n int32) bool {
	if !r.ServiceKnown {
		return r.last.Waiting > 0 && s.Waiting > 0
	}
	expect := r.Service * dt * float64(n)
	return float64(r.last.Waiting) >= expect+3*math.Sqrt(expect)
}

func (r *Rates) observeArrival(rate, dt float64) {
	if r.n == arrivalWindow {
		copy(r.in[:], r.in[1:])
		copy(r.dts[:], r.dts[1:])
		r.n--
	}
	r.in[r.n], r.dts[r.n] = rate, dt
	r.n++
	if r.n < 2 {
		return // one interval cannot tell a burst from a rate
	}
	// The last n intervals, as many as cover about arrivalSpan.
	span := 0.0
	for _, d := range r.dts[:r.n] {
		span += d
	}
	n := min(r.n, max(stepIntervals, int(math.Ceil(arrivalSpan/(span/float64(r.n))-1e-9))))
	recent := r.in[r.n-n : r.n]
	var sorted [arrivalWindow]float64
	copy(sorted[:], recent)
	slices.Sort(sorted[:n])
	// Drop the highest fifth (at least one) and the lowest fifth; over a
	// window cut short by long intervals, at least one at each end: such
	// intervals alias the server's other timers (one holds no new count of
	// arrivals, the next two), and keeping the low ones would halve the
	// rate.
	k := n / 5
	lo := k
	if n < r.n && n >= 3 {
		lo = max(k, 1)
	}
	kept := sorted[lo : n-max(1, k)]
	sum := 0.0
	for _, v := range kept {
		sum += v
	}
	est := sum / float64(len(kept))
	if n >= stepIntervals {
		last := recent[n-stepIntervals : n]
		if up := slices.Min(last); up > stepFactor*est {
			est = up
		} else if down := slices.Max(last); down*stepFactor < est {
			est = down
		}
	}
	r.Arrival, r.ArrivalKnown = est, true
}
