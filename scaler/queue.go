package scaler

import (
	"fmt"
	"math"
	"time"
)

// QueuePolicy is the queue rule of one member, from its annotations.
type QueuePolicy struct {
	Target         int64
	Min, Max       int32
	MaxDelta       int32 // 0: no limit
	ScaleDownDelay time.Duration
	// Horizon is how fast a backlog above target is drained; DefaultHorizon when 0.
	Horizon time.Duration
}

// DefaultHorizon is the drain horizon of the rate-aware rule.
const DefaultHorizon = 5 * time.Second

// downBand is the dead band: shrink only while backlog <= downBand * target.
const downBand = 0.7

// QueueInput is what the rule sees on one tick.
type QueueInput struct {
	Now     time.Time
	Current int32 // replicas asked for now (spec)
	Ready   int32
	// BacklogKnown is false when the queue could not be read this tick.
	BacklogKnown bool
	Backlog      int64
	Rates        Rates
}

// QueueState is what the rule remembers between ticks of one member.
type QueueState struct {
	recs []recommendation
}

type recommendation struct {
	at       time.Time
	replicas int32
}

// Decision is the outcome for one member.
type Decision struct {
	Replicas int32
	Reason   string
}

// DecideQueue applies the queue rule: rate-aware when the service rate of a
// replica is known (replicas = (arrival + (backlog - target) / horizon) /
// service), proportional to backlog/target while it is not; grow only while
// backlog > target, shrink only while backlog <= 0.7 x target and only to the
// highest recommendation of the last ScaleDownDelay; at most MaxDelta per
// decision; within Min and Max. A queue that cannot be read holds the member.
func DecideQueue(p QueuePolicy, in QueueInput, st *QueueState) Decision {
	cur := in.Current
	if !in.BacklogKnown {
		return Decision{Replicas: cur, Reason: "queue unreadable: holding"}
	}
	horizon := p.Horizon
	if horizon <= 0 {
		horizon = DefaultHorizon
	}
	target := float64(p.Target)
	backlog := float64(in.Backlog)
	// raw is what the rule wants now; floor is the part of it that stands for
	// demand (arrivals), which alone is held through the scale-down delay, so
	// that a drained surplus is given back at once but a lull is not believed
	// until it lasts.
	var raw, floor float64
	var basis string
	switch {
	case in.Rates.ServiceKnown && in.Rates.Service > 0:
		arrival := 0.0
		if in.Rates.ArrivalKnown {
			arrival = in.Rates.Arrival
		}
		demand := arrival / in.Rates.Service
		raw = demand + (backlog-target)/horizon.Seconds()/in.Rates.Service
		// The least the rule wants at this demand, even with an empty queue.
		floor = demand - target/horizon.Seconds()/in.Rates.Service
		basis = "rates"
	case cur == 0:
		raw = backlog / target
		floor = raw
		basis = "service rate unknown"
	default:
		raw = float64(cur) * backlog / target
		floor = raw
		basis = "service rate unknown"
	}
	want := ceilReplicas(raw)
	// Never leave messages with nobody to take them.
	if want < 1 && (in.Backlog > 0 || (in.Rates.ArrivalKnown && in.Rates.Arrival > 0)) {
		want = 1
	}
	switch {
	case want > cur && backlog <= target && cur > 0:
		want = cur // grow only while backlog > target
	case want < cur && backlog > downBand*target:
		want = cur // shrink only at or below 0.7 x target
	}
	// Scale-down delay: no shrink below the highest demand of the window.
	st.recs = append(st.recs, recommendation{at: in.Now, replicas: ceilReplicas(floor)})
	keep := st.recs[:0]
	for _, r := range st.recs {
		if in.Now.Sub(r.at) <= p.ScaleDownDelay {
			keep = append(keep, r)
		}
	}
	st.recs = keep
	if want < cur {
		for _, r := range st.recs {
			want = max(want, min(r.replicas, cur))
		}
	}
	if p.MaxDelta > 0 {
		want = min(max(want, cur-p.MaxDelta), cur+p.MaxDelta)
	}
	want = min(max(want, p.Min), p.Max)
	if want == cur {
		return Decision{Replicas: want} // steady: no reason needed, none built
	}
	if basis == "rates" {
		arrival := 0.0
		if in.Rates.ArrivalKnown {
			arrival = in.Rates.Arrival
		}
		basis = fmt.Sprintf("in %.1f/s, out %.1f/s per replica", arrival, in.Rates.Service)
	}
	var why string
	switch {
	case want > cur && in.Backlog > p.Target:
		why = fmt.Sprintf("backlog %d > target %d", in.Backlog, p.Target)
	case want > cur:
		why = fmt.Sprintf("backlog %d waiting, target %d", in.Backlog, p.Target)
	case want < cur:
		why = fmt.Sprintf("backlog %d <= %.0f%% of target %d", in.Backlog, downBand*100, p.Target)
	default:
		why = fmt.Sprintf("backlog %d, target %d", in.Backlog, p.Target)
	}
	return Decision{Replicas: want, Reason: why + ", " + basis}
}

// ceilReplicas rounds up, tolerating float noise, and bounds the result.
func ceilReplicas(x float64) int32 {
	if math.IsNaN(x) || x <= 0 {
		return 0
	}
	return int32(min(math.Ceil(x-1e-9), math.MaxInt32/2))
}
