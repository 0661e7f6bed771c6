// Package sim is a deterministic simulator of a queue, its producer and its
// consumers on a virtual clock. It runs scaling policies side by side on the
// same traces: this project's decision (scaler.DecideQueue), the HPA as KEDA
// drives it by default, and the original Microscaling Engine's PD rule, and
// scores how well each holds the backlog at its target and at what cost.
package sim

import (
	"math"
	"time"
)

// World fixes the workload's physics.
type World struct {
	Target      int64         // backlog to hold
	ServiceRate float64       // messages per second one ready replica finishes
	StartDelay  time.Duration // from scale-up to a replica consuming
	Max         int32         // max replicas for every policy
	Step        time.Duration // simulation step
}

// DefaultWorld is the world of the benchmark.
var DefaultWorld = World{Target: 50, ServiceRate: 10, StartDelay: 5 * time.Second, Max: 100, Step: 100 * time.Millisecond}

// Trace is a producer: messages per second at t.
type Trace struct {
	Name string
	// Warm starts the run at the replicas the trace's first rate needs, with
	// the backlog at target; otherwise a run starts at 1 replica, empty queue.
	Warm     bool
	Duration time.Duration
	Rate     func(t time.Duration) float64
}

// Observation is what a policy can read of the world at a tick.
type Observation struct {
	Now     time.Duration
	Backlog int64
	Arrived int64 // cumulative arrivals
	Ready   int32 // replicas consuming
	Current int32 // replicas asked for
}

// Policy decides replicas. Interval is how often Decide is called.
type Policy interface {
	Name() string
	Interval() time.Duration
	Decide(o Observation) int32
}

// Point is one sample of a run, for plots.
type Point struct {
	T        time.Duration
	Backlog  float64
	Replicas int32
}

// Result scores one policy on one trace.
type Result struct {
	Policy, Trace string
	// MeanError is the time average of |backlog - target| / target.
	MeanError float64
	// PeakBacklog is the highest backlog seen.
	PeakBacklog float64
	// ReplicaSeconds integrates the replicas asked for.
	ReplicaSeconds float64
	// ScaleOps counts changes of replicas; Reversals counts changes of direction.
	ScaleOps, Reversals int
	// LateReversals counts reversals in the second half, after warm-up.
	LateReversals int
	Points        []Point
}

// Run simulates policy p on trace tr in world w, from one replica and an
// empty queue.
func Run(w World, tr Trace, p Policy) Result {
	res := Result{Policy: p.Name(), Trace: tr.Name}
	var (
		backlog  float64
		arrived  float64
		starting []time.Duration // start times of replicas not yet ready
		ready    int32           = 1
		current  int32           = 1
		nextTick time.Duration
		lastDir  int
		errSum   float64
		steps    int
	)
	dt := w.Step.Seconds()
	if tr.Warm {
		current = int32(math.Ceil(tr.Rate(0) / w.ServiceRate))
		ready, backlog = current, float64(w.Target)
	}
	for now := time.Duration(0); now < tr.Duration; now += w.Step {
		// Replicas become ready after their start delay.
		keep := starting[:0]
		for _, at := range starting {
			if now-at >= w.StartDelay {
				ready++
			} else {
				keep = append(keep, at)
			}
		}
		starting = keep
		// Messages arrive and are served.
		in := tr.Rate(now) * dt
		arrived += in
		backlog += in
		backlog = math.Max(0, backlog-float64(ready)*w.ServiceRate*dt)

		if now >= nextTick {
			nextTick = now + p.Interval()
			want := min(max(p.Decide(Observation{Now: now, Backlog: int64(math.Round(backlog)), Arrived: int64(arrived), Ready: ready, Current: current}), 0), w.Max)
			if want != current {
				res.ScaleOps++
				dir := 1
				if want < current {
					dir = -1
				}
				if lastDir != 0 && dir != lastDir {
					res.Reversals++
					if now >= tr.Duration/2 {
						res.LateReversals++
					}
				}
				lastDir = dir
				for ; current < want; current++ {
					starting = append(starting, now)
				}
				for ; current > want; current-- {
					// Remove replicas still starting first.
					if len(starting) > 0 {
						starting = starting[:len(starting)-1]
					} else {
						ready--
					}
				}
			}
		}
		errSum += math.Abs(backlog-float64(w.Target)) / float64(w.Target)
		steps++
		res.ReplicaSeconds += float64(current) * dt
		res.PeakBacklog = math.Max(res.PeakBacklog, backlog)
		if steps%10 == 0 {
			res.Points = append(res.Points, Point{T: now, Backlog: backlog, Replicas: current})
		}
	}
	res.MeanError = errSum / float64(steps)
	return res
}
