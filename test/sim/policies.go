package sim

import (
	"cmp"
	"math"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Microscaling is this project's decision: the controller's own stepper,
// policy.MemberState.Step, at a 1 s tick, with the annotations' defaults.
type Microscaling struct {
	Policy policy.QueuePolicy
	state  policy.MemberState
	epoch  time.Time
	name   string
}

// NewMicroscaling returns the project's policy for world w.
func NewMicroscaling(w World) *Microscaling {
	return &Microscaling{
		Policy: policy.QueuePolicy{Target: w.Target, Max: w.Max, ScaleDownDelay: annotations.DefaultScaleDownDelay},
		epoch:  time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		name:   "microscaling",
	}
}

// NewMicroscalingWait returns the project's policy holding a wait target
// instead of a backlog target.
func NewMicroscalingWait(w World, wait time.Duration) *Microscaling {
	m := NewMicroscaling(w)
	m.Policy.Target, m.Policy.Wait = 0, wait
	m.name = "microscaling-wait-" + wait.String()
	return m
}

func (m *Microscaling) Name() string            { return m.name }
func (m *Microscaling) Interval() time.Duration { return time.Second }

func (m *Microscaling) Decide(o Observation) int32 {
	now := m.epoch.Add(o.Now)
	// As the controller reads them: Ready pods from Kubernetes, connected
	// consumers from the queue.
	return m.state.Step(m.Policy, now, o.Current, o.Ready,
		policy.QueueReading{Backlog: o.Backlog, Waiting: o.Waiting, Arrived: o.Arrived, Consumers: int64(o.Consuming)}, true).Replicas
}

// KEDAHPA is the HPA as KEDA drives it: the scaler is polled every
// Polling (KEDA's default 30 s), the HPA syncs every 15 s with desired =
// ceil(backlog / threshold) (AverageValue), a 0.1 tolerance, scale-up of at
// most max(4 pods, 100%) per 15 s, and a Stabilization scale-down window
// (the HPA's default 300 s).
type KEDAHPA struct {
	// Threshold is the per-replica backlog (KEDA's depthThreshold).
	Threshold float64
	Max       int32
	// Polling and Stabilization: 0 for KEDA's and the HPA's defaults.
	Polling, Stabilization time.Duration

	metric   int64
	lastPoll time.Duration
	polled   bool
	recs     []rec
}

type rec struct {
	at time.Duration
	n  int32
}

func (k *KEDAHPA) Name() string            { return "keda-hpa" }
func (k *KEDAHPA) Interval() time.Duration { return 15 * time.Second }

func (k *KEDAHPA) Decide(o Observation) int32 {
	polling, window := cmp.Or(k.Polling, 30*time.Second), cmp.Or(k.Stabilization, 300*time.Second)
	if !k.polled || o.Now-k.lastPoll >= polling {
		k.metric, k.lastPoll, k.polled = o.Backlog, o.Now, true
	}
	cur := o.Current
	var want int32
	switch {
	case cur == 0:
		// KEDA activates 0 -> 1 on a non-zero metric.
		want = 0
		if k.metric > 0 {
			want = 1
		}
	default:
		ratio := float64(k.metric) / (k.Threshold * float64(cur))
		want = cur
		if math.Abs(ratio-1) > 0.1 {
			want = int32(math.Ceil(float64(k.metric) / k.Threshold))
		}
	}
	// Scale-down stabilization: the highest recommendation of the window.
	k.recs = append(k.recs, rec{o.Now, want})
	keep := k.recs[:0]
	for _, r := range k.recs {
		if o.Now-r.at <= window {
			keep = append(keep, r)
		}
	}
	k.recs = keep
	if want < cur {
		for _, r := range k.recs {
			want = max(want, min(r.n, cur))
		}
	}
	if want > cur {
		want = min(want, max(cur+4, 2*cur))
	}
	return min(want, k.Max)
}

// Engine is the original Microscaling Engine's queue rule: a 500 ms tick,
// delta = kP*(len - target) + kD*velocity (velocity in messages per tick),
// grow only while len > target, shrink only while len <= 0.7*target,
// at most MaxDelta per tick. Gain scales both gains (1 when 0).
type Engine struct {
	Target   int64
	Max      int32
	MaxDelta int32
	Gain     float64

	prev    int64
	started bool
}

func (e *Engine) Name() string            { return "engine-pd" }
func (e *Engine) Interval() time.Duration { return 500 * time.Millisecond }

func (e *Engine) Decide(o Observation) int32 {
	g := cmp.Or(e.Gain, 1)
	kP, kD := 0.04*g, 1.25*g
	vel := 0.0
	if e.started {
		vel = float64(o.Backlog - e.prev)
	}
	e.prev, e.started = o.Backlog, true
	delta := kP*float64(o.Backlog-e.Target) + kD*vel
	d := int32(math.Round(delta))
	switch {
	case d > 0 && o.Backlog <= e.Target:
		d = 0
	case d < 0 && float64(o.Backlog) > 0.7*float64(e.Target):
		d = 0
	}
	d = min(max(d, -e.MaxDelta), e.MaxDelta)
	return min(max(o.Current+d, 0), e.Max)
}

// Oracle has its max replicas consuming from the start and keeps them: no
// policy waits less, and what it spends is the price of that.
type Oracle struct{ Max int32 }

func (o *Oracle) Name() string                   { return "oracle" }
func (o *Oracle) Interval() time.Duration        { return time.Second }
func (o *Oracle) Decide(Observation) int32       { return o.Max }
func (o *Oracle) Initial(w World, _ Trace) int32 { return o.Max }

// Policies returns fresh instances of the compared policies for trace tr:
// the project's rule, the HPA as KEDA drives it, the original engine, and
// the project's rule with a 5 s wait target instead of a backlog target.
// The HPA's per-replica threshold is tuned per trace so that at the trace's
// mean load it holds the same total backlog as the target: its best case.
func Policies(w World, tr Trace) []Policy {
	replicasAtMean := max(1, math.Ceil(meanRate(tr)/w.ServiceRate))
	return []Policy{
		NewMicroscaling(w),
		&KEDAHPA{Threshold: float64(w.Target) / replicasAtMean, Max: w.Max},
		&Engine{Target: w.Target, Max: w.Max, MaxDelta: 5},
		NewMicroscalingWait(w, 5*time.Second),
	}
}
