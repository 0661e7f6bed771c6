package scaler

import (
	"math"
	"time"
)

// QueueSample is one read of a member's queues.
type QueueSample struct {
	Time time.Time
	// Backlog is ready + in flight + deferred messages.
	Backlog int64
	// Arrived is the cumulative count of messages put on the channel (NSQ
	// message_count); it only grows until nsqd restarts.
	Arrived int64
	// Ready is how many replicas were consuming during the interval that
	// ends at this sample.
	Ready int32
}

// Rates estimates a queue's arrival rate and the service rate of one
// replica from successive samples. Service is measured only over intervals
// where the backlog stayed above zero, when replicas were busy, so an idle
// queue never makes replicas look slow.
type Rates struct {
	last    QueueSample
	started bool
	// Arrival is messages per second; valid when ArrivalKnown.
	Arrival      float64
	ArrivalKnown bool
	// Service is messages per second per ready replica; valid when ServiceKnown.
	Service      float64
	ServiceKnown bool
}

// rateTau is the time constant of the exponential smoothing of rates.
const rateTau = 2 * time.Second

// Observe folds a sample into the estimate.
func (r *Rates) Observe(s QueueSample) {
	if !r.started {
		r.last, r.started = s, true
		return
	}
	dt := s.Time.Sub(r.last.Time).Seconds()
	arrived := s.Arrived - r.last.Arrived
	if dt <= 0 {
		return
	}
	if arrived < 0 {
		// Counter reset (nsqd restarted): start over from this sample.
		*r = Rates{last: s, started: true, Service: r.Service, ServiceKnown: r.ServiceKnown}
		return
	}
	alpha := 1 - math.Exp(-dt/rateTau.Seconds())
	in := float64(arrived) / dt
	if r.ArrivalKnown && in < r.Arrival {
		// Fast attack, slow decay: a surge is acted on at once, a lull is
		// believed only once it lasts.
		r.Arrival += alpha * (in - r.Arrival)
	} else {
		r.Arrival, r.ArrivalKnown = in, true
	}
	done := float64(arrived - (s.Backlog - r.last.Backlog))
	if r.last.Backlog > 0 && s.Backlog > 0 && s.Ready > 0 && done >= 0 {
		per := done / dt / float64(s.Ready)
		if r.ServiceKnown {
			r.Service += alpha * (per - r.Service)
		} else if per > 0 {
			r.Service, r.ServiceKnown = per, true
		}
	}
	if r.last.Backlog == 0 && s.Backlog == 0 && s.Ready > 0 && r.ServiceKnown {
		// Idle replicas kept up with every arrival: each serves at least this.
		r.Service = max(r.Service, float64(arrived)/dt/float64(s.Ready))
	}
	r.last = s
}
