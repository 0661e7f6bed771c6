// Package sim is a seeded simulator of an NSQ channel, its producer and its
// consumer pods on a virtual clock, with NSQ's semantics: each consumer holds
// up to MaxInFlight messages (counted in the backlog, as nsqd counts them)
// and handles them one at a time with exponential service times; a pod
// consumes only after a start delay (2-20 s) and a connect delay after
// Ready; a pod that is scaled away finishes what it holds. Arrivals are
// Poisson, bursts are added at once. It runs scaling policies side by side
// on the same traces and seeds, and scores what a user sees: each message's
// wait, replica-seconds, peak replicas, scale operations and reversals.
package sim

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// World fixes the workload's physics.
type World struct {
	Target      int64   // backlog to hold
	ServiceRate float64 // mean messages per second one consumer handles
	MaxInFlight int     // messages a consumer holds at once (go-nsq MaxInFlight)
	// StartMin and StartMax bound the cluster's typical pod start delay, one
	// per seed (uniform); each pod starts within StartSpread of it, since
	// pods of one image in one cluster share the pull, scheduler and kubelet.
	StartMin, StartMax time.Duration
	StartSpread        float64
	ConnectDelay       time.Duration // from Ready to consuming
	// FixedService makes every message take exactly 1/ServiceRate, as the
	// test consumers on the real stack do; otherwise service times are
	// exponential.
	FixedService bool
	// OneReady makes Kubernetes count at most one pod Ready while every
	// started pod consumes: readiness probes failing under load, as
	// TestLinearRiseKeepsUp's third shape does on the real stack.
	OneReady bool
	Max      int32         // max replicas for every policy
	Step     time.Duration // simulation step
}

// DefaultWorld is the world of the benchmark.
var DefaultWorld = World{
	Target: 50, ServiceRate: 10, MaxInFlight: 5,
	StartMin: 2 * time.Second, StartMax: 20 * time.Second, StartSpread: 0.25, ConnectDelay: time.Second,
	Max: 100, Step: 50 * time.Millisecond,
}

// RealStackWorld is the world of `make bench-burst`: kwok pods Running
// within about a second, consumers connected 200 ms later, 100 ms a message,
// 5 in flight; used to check the simulator's predictions against the stack.
var RealStackWorld = World{
	Target: 50, ServiceRate: 10, MaxInFlight: 5, FixedService: true,
	StartMin: 700 * time.Millisecond, StartMax: 1300 * time.Millisecond, StartSpread: 0.25, ConnectDelay: 200 * time.Millisecond,
	Max: 100, Step: 10 * time.Millisecond,
}

// Observation is what a policy can read of the world at a tick, as the
// controller reads it from nsqd and the API server.
type Observation struct {
	Now       time.Duration
	Backlog   int64 // waiting + in flight
	Waiting   int64 // not yet delivered
	Arrived   int64 // cumulative arrivals
	Consuming int32 // replicas connected and taking messages
	Ready     int32 // pods Ready (consuming or connecting)
	Current   int32 // replicas asked for
}

// Policy decides replicas. Interval is how often Decide is called.
type Policy interface {
	Name() string
	Interval() time.Duration
	Decide(o Observation) int32
}

// initial is a Policy that starts with its own count of replicas, ready.
type initial interface {
	Initial(w World, tr Trace) int32
}

// Point is one sample of a run, for plots.
type Point struct {
	T        time.Duration
	Backlog  float64
	Replicas int32
}

// Result scores one policy on one trace and seed.
type Result struct {
	Policy, Trace string
	Seed          uint64
	// WaitP50/95/99 are percentiles of each message's wait from arrival to
	// the start of its handling, in seconds (messages never handled count
	// with their wait at the end of the run).
	WaitP50, WaitP95, WaitP99 float64
	PeakBacklog               float64
	// ReplicaSeconds integrates the replicas asked for.
	ReplicaSeconds float64
	// PeakReplicas is the most replicas asked for; Needed is the most the
	// trace's rate needs (ceil(rate / service rate)).
	PeakReplicas, Needed int32
	// ToNeeded is when the replicas asked for first reached Needed after
	// the trace's first burst or non-zero rate; -1 if never.
	ToNeeded time.Duration
	// ScaleOps counts changes of replicas; Reversals counts direction
	// changes inside a monotonic stretch of the trace's rate (see Stretches).
	ScaleOps, Reversals int
	// Behind is the longest time the backlog stayed above FellBehindFactor x
	// the target; FellBehind is set when that is over FellBehindFor: the
	// policy let the queue run away from its target, whatever else it won.
	Behind     time.Duration
	FellBehind bool
	Points     []Point
}

// A run fell behind when its backlog stayed above FellBehindFactor x the
// target for over FellBehindFor: twice the drain horizon the rule plans a
// backlog over (policy.Horizon, 45 s), which is longer than a burst takes
// to drain once the pods it asked for have started (the world's slowest
// start is 20 s), and shorter than a stall on a rising load lasts (the one
// found on the real stack ran away for over 100 s).
const (
	FellBehindFactor = 10
	FellBehindFor    = 90 * time.Second
)

type pod struct {
	consumeAt float64 // when it connects (start + ready + connect)
	readyAt   float64
	inflight  []float64 // arrival times of held messages, oldest first
	busy      bool
	finish    float64
	leaving   bool // scaled away: takes nothing new, finishes what it holds
}

// fifo is the channel's queue of arrival times.
type fifo struct {
	a    []float64
	head int
}

func (q *fifo) len() int { return len(q.a) - q.head }
func (q *fifo) push(t float64) {
	if q.head > 4096 && q.head*2 > len(q.a) {
		q.a = append(q.a[:0], q.a[q.head:]...)
		q.head = 0
	}
	q.a = append(q.a, t)
}
func (q *fifo) peek() float64 { return q.a[q.head] }
func (q *fifo) pop() float64  { q.head++; return q.a[q.head-1] }

// Run simulates policy p on trace tr with the given seed in world w, from
// the replicas the trace's first rate needs (at least one), ready, and an
// empty queue.
func Run(w World, tr Trace, p Policy, seed uint64) Result {
	// One stream each for arrivals, service times and pod starts, so that a
	// policy that starts more pods or runs them longer sees the same
	// arrivals and the same work as another on the same seed: results are
	// paired per seed.
	arrivals := rand.New(rand.NewPCG(seed, 0xa441))
	service := rand.New(rand.NewPCG(seed, 0x5e41))
	starts := rand.New(rand.NewPCG(seed, 0x57a7))
	res := Result{Policy: p.Name(), Trace: tr.Name, Seed: seed, Needed: tr.needed(w), ToNeeded: -1}
	loadStart, behindSince := time.Duration(-1), time.Duration(-1)
	rate := tr.rateFunc(seed)
	startDelay := w.StartMin.Seconds() + starts.Float64()*(w.StartMax-w.StartMin).Seconds()
	var (
		q        fifo
		pods     []*pod
		arrived  int64
		waits    []float64
		current  int32
		nextTick time.Duration
		ops      []op
	)
	current = max(1, int32(math.Ceil(rate(0)/w.ServiceRate)))
	if in, ok := p.(initial); ok {
		current = in.Initial(w, tr)
	}
	for range current {
		pods = append(pods, &pod{})
	}
	dt := w.Step.Seconds()
	nextArrival := math.Inf(1)
	schedule := func(from float64) {
		r := rate(time.Duration(from * float64(time.Second)))
		nextArrival = math.Inf(1)
		if r > 0 {
			nextArrival = from + arrivals.ExpFloat64()/r
		}
	}
	schedule(0)
	bursts := slices.Clone(tr.Bursts)
	order := make([]int, 0, 128)
	for now := time.Duration(0); now < tr.Duration; now += w.Step {
		t0, t1 := now.Seconds(), (now + w.Step).Seconds()
		for len(bursts) > 0 && bursts[0].At <= now+w.Step {
			for range bursts[0].Messages {
				q.push(bursts[0].At.Seconds())
				arrived++
			}
			bursts = bursts[1:]
		}
		// Poisson arrivals; the rate is re-read at each step's start.
		if math.IsInf(nextArrival, 1) {
			schedule(t0)
		}
		for nextArrival < t1 {
			q.push(nextArrival)
			arrived++
			schedule(nextArrival)
		}
		// Consumers, in a rotating order so that none is favoured.
		order = order[:0]
		for i := range pods {
			order = append(order, i)
		}
		if len(order) > 1 {
			k := int(now/w.Step) % len(order)
			order = append(order[k:], order[:k]...)
		}
		for _, i := range order {
			pods[i].step(&q, t0, t1, w, service, &waits)
		}
		pods = slices.DeleteFunc(pods, func(pd *pod) bool { return pd.leaving && len(pd.inflight) == 0 })

		if now >= nextTick {
			nextTick = now + p.Interval()
			o := Observation{Now: now, Arrived: arrived, Current: current, Waiting: int64(q.len())}
			o.Backlog = o.Waiting
			for _, pd := range pods {
				o.Backlog += int64(len(pd.inflight))
				if !pd.leaving && pd.consumeAt <= t0 {
					o.Consuming++
				}
				if !pd.leaving && pd.readyAt <= t0 {
					o.Ready++
				}
			}
			if w.OneReady {
				o.Ready = min(o.Ready, 1)
			}
			want := min(max(p.Decide(o), 0), w.Max)
			if want != current {
				ops = append(ops, op{at: now, up: want > current})
				for ; current < want; current++ {
					start := t0 + startDelay*(1+w.StartSpread*(2*starts.Float64()-1))
					pods = append(pods, &pod{readyAt: start, consumeAt: start + w.ConnectDelay.Seconds()})
				}
				for ; current > want; current-- {
					scaleAway(pods, t0)
				}
			}
		}
		backlog := float64(q.len())
		for _, pd := range pods {
			backlog += float64(len(pd.inflight))
		}
		if loadStart < 0 && (backlog > 0 || rate(now) > 0) {
			loadStart = now
		}
		if res.ToNeeded < 0 && loadStart >= 0 && current >= res.Needed {
			res.ToNeeded = now - loadStart
		}
		if backlog > float64(FellBehindFactor*w.Target) {
			if behindSince < 0 {
				behindSince = now
			}
			res.Behind = max(res.Behind, now+w.Step-behindSince)
		} else {
			behindSince = -1
		}
		res.ReplicaSeconds += float64(current) * dt
		res.PeakBacklog = math.Max(res.PeakBacklog, backlog)
		res.PeakReplicas = max(res.PeakReplicas, current)
		if int(now/w.Step)%int(time.Second/w.Step) == 0 {
			res.Points = append(res.Points, Point{T: now, Backlog: backlog, Replicas: current})
		}
	}
	end := tr.Duration.Seconds()
	for i := q.head; i < len(q.a); i++ {
		waits = append(waits, end-q.a[i])
	}
	for _, pd := range pods {
		for _, a := range pd.inflight {
			waits = append(waits, end-a)
		}
	}
	slices.Sort(waits)
	res.WaitP50, res.WaitP95, res.WaitP99 = quantile(waits, 0.5), quantile(waits, 0.95), quantile(waits, 0.99)
	res.FellBehind = res.Behind > FellBehindFor
	res.ScaleOps = len(ops)
	res.Reversals = reversals(ops, tr.Stretches())
	return res
}

// scaleAway removes one replica as a ReplicaSet does: a pod not yet Ready
// first (the youngest), else the youngest consuming pod, which then finishes
// what it holds.
func scaleAway(pods []*pod, now float64) {
	var pick *pod
	for _, pd := range pods {
		if pd.leaving {
			continue
		}
		switch {
		case pick == nil:
			pick = pd
		case (pd.readyAt > now) != (pick.readyAt > now):
			if pd.readyAt > now {
				pick = pd
			}
		case pd.readyAt >= pick.readyAt:
			pick = pd
		}
	}
	if pick == nil {
		return
	}
	pick.leaving = true
}

// step runs one consumer from t0 to t1: it takes messages from the channel
// while it holds fewer than MaxInFlight, and handles them one at a time.
func (pd *pod) step(q *fifo, t0, t1 float64, w World, rng *rand.Rand, waits *[]float64) {
	if pd.consumeAt >= t1 {
		return
	}
	cursor := max(t0, pd.consumeAt)
	for {
		for !pd.leaving && len(pd.inflight) < w.MaxInFlight && q.len() > 0 && q.peek() <= cursor {
			pd.inflight = append(pd.inflight, q.pop())
		}
		switch {
		case pd.busy:
			if pd.finish > t1 {
				return
			}
			cursor = pd.finish
			pd.busy = false
			pd.inflight = pd.inflight[1:]
		case len(pd.inflight) > 0:
			*waits = append(*waits, cursor-pd.inflight[0])
			pd.busy = true
			d := 1 / w.ServiceRate
			if !w.FixedService {
				d *= rng.ExpFloat64()
			}
			pd.finish = cursor + d
		case !pd.leaving && q.len() > 0 && q.peek() < t1:
			cursor = max(cursor, q.peek()) // idle until the next message
		default:
			return
		}
	}
}

func quantile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

type op struct {
	at time.Duration
	up bool
}

// reversals counts pairs of consecutive scale operations inside one
// stretch that go opposite ways, except, in a flat stretch, an increase
// followed by a decrease (a drained surplus given back).
func reversals(ops []op, st []Stretch) int {
	n := 0
	for i := 1; i < len(ops); i++ {
		a, b := ops[i-1], ops[i]
		if a.up == b.up {
			continue
		}
		s, ok := stretchOf(st, a.at)
		if !ok || s.End <= b.at {
			continue
		}
		if s.Dir == 0 && a.up {
			continue
		}
		n++
	}
	return n
}

func stretchOf(st []Stretch, t time.Duration) (Stretch, bool) {
	for _, s := range st {
		if t >= s.Start && t < s.End {
			return s, true
		}
	}
	return Stretch{}, false
}

// ReplicaSecondsBetween integrates the replicas asked for from from to to
// (the points are a second apart).
func (r Result) ReplicaSecondsBetween(from, to time.Duration) float64 {
	rs := 0.0
	for _, p := range r.Points {
		if p.T >= from && p.T < to {
			rs += float64(p.Replicas)
		}
	}
	return rs
}
