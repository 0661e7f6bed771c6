package policy

import (
	"cmp"
	"fmt"
	"math"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

// QueuePolicy is the queue rule of one member, from its annotations. At
// least one of Target and Wait is set.
type QueuePolicy struct {
	Target         int64         // backlog to hold; 0: none
	Wait           time.Duration // longest a message should wait; 0: none
	Min, Max       int32
	MaxDelta       int32 // 0: no limit
	ScaleDownDelay time.Duration
	// FallbackReplicas are asked for once the queue has been unreadable
	// for FallbackAfter; FallbackAfter 0: none (an unreadable queue holds).
	FallbackReplicas int32
	FallbackAfter    time.Duration
	// ScaleUpLimit and ScaleDownLimit bound the change in any window of
	// their period (unset: none).
	ScaleUpLimit, ScaleDownLimit annotations.RateLimit
}

// Horizon is how long the rule gives a backlog above target-queue-length to
// drain: the surplus of replicas it asks for is the excess over Horizon.
// Longer costs waits, shorter costs replicas that idle once it is drained.
const Horizon = 45 * time.Second

// downBand is the dead band: shrink only while backlog <= downBand * target.
const downBand = 0.7

// maxUtilization is the busiest the rule lets replicas be: a queue whose
// consumers are busy all the time grows without bound on any jitter.
const maxUtilization = 0.95

// coldStep bounds growth while the service rate is unknown: at most
// max(coldStep, current) more replicas per decision.
const coldStep = 4

// QueueInput is what the rule sees on one tick.
type QueueInput struct {
	Now     time.Time
	Current int32 // replicas asked for now (spec)
	// Consuming is how many replicas are taking messages; the rest of
	// Current is capacity on the way (Pending, starting, not yet connected).
	Consuming int32
	// BacklogKnown is false when the queue could not be read this tick.
	BacklogKnown bool
	Backlog      int64 // waiting + in flight + deferred
	Waiting      int64 // not yet delivered to any consumer
	Arrived      int64 // cumulative arrivals, as in QueueSample
	Rates        Rates
	// Saturation bounds the replicas while more stopped adding
	// throughput (saturation.go).
	Saturation Saturation
	// Startup is how long new replicas take to consume (learned; 0 while
	// unknown); OnWay, when those on the way (Current less Consuming) are
	// expected to.
	Startup time.Duration
	OnWay   OnWay
	// BacklogOnly: the queue counts no arrivals, so no rate is ever known;
	// the rule grows while the backlog is above its target and gives back
	// one replica at a time (after the scale-down delay) while it is below.
	BacklogOnly bool
}

// QueueState is what the rule remembers between ticks of one member.
type QueueState struct {
	window demandWindow
	// unreadableSince is when the queue was last read before the run of
	// decisions it could not be read for (the first of them when it never
	// was); zero while it is read. lastRead is the last decision it was.
	unreadableSince, lastRead time.Time
	// trail is the replicas over the longest rate-limit period.
	trail trail
	// wait is what a wait goal remembers (wait.go).
	wait waitState
	// util is the busiest the replicas may be (maxUtilization when 0),
	// lowered each time a shrink had to be taken back at the same load.
	util float64
	// shrunk is the last shrink while the rate was known: to how many, at
	// what arrival rate and service rate.
	shrunk struct {
		to               int32
		arrival, service float64
		valid            bool
	}
}

// Decision is the outcome for one member: of the queue rule, and of a
// group decision (GroupOutput.Decisions), where Reason is the queue rule's
// words then the allocation's, and Held the allocation's word, else the
// queue rule's.
type Decision struct {
	Replicas int32
	Reason   string
	// Held names what keeps Replicas from what the load alone asks for
	// (one of the Held* words); empty when nothing does.
	Held string
	// Corrected is non-zero while the guard holds the service rate at what
	// the replicas delivered, the estimate having let the backlog run away.
	Corrected Correction
	// Fallback: the queue has been unreadable for the policy's
	// FallbackAfter, and Replicas are its FallbackReplicas.
	Fallback bool
	// Saturated is set while more replicas stopped adding throughput (its
	// Saturated field) or a step above the knee is probed.
	Saturated Saturation
}

// What holds a member, in Decision.Held.
const (
	HeldMax        = "max"        // max-replicas
	HeldMin        = "min"        // min-replicas
	HeldMaxDelta   = "max-delta"  // the step allowed per decision
	HeldRateLimit  = "rate-limit" // scale-up-limit or scale-down-limit
	HeldDelay      = "delay"      // the scale-down delay (or a rising load) keeps replicas up
	HeldUnreadable = "unreadable" // the queue cannot be read
	HeldFallback   = "fallback"   // unreadable for fallback-after: at fallback-replicas
	HeldPaused     = "paused"     // annotated paused
	HeldBudget     = "budget"     // group-max-replicas, taken by higher priorities
	HeldRoom       = "room"       // node room, taken by higher priorities or unverified
	HeldPriority   = "priority"   // a remainder whose pods' priority is not low enough to grow
	HeldSaturated  = "saturated"  // more replicas stopped adding throughput: at the knee, or probing a step above it
)

// DecideQueue applies the queue rule to one member.
//
// With the service rate of a replica known, demand = arrival / service is
// what the arrivals need; the rule asks for demand plus a surplus that
// drains the waiting backlog above target-queue-length over Horizon, and
// (with target-wait) at least (arrival + backlog / wait) / service, so the
// backlog drains within the wait while arrivals are served. Growth believes
// the service rate at the top of its uncertainty (Rates.Spread). Growth
// happens only while a target is exceeded, shrinking only while every
// target is at or below 0.7x, never while the arrivals of the last
// ScaleDownDelay rise, and never below demand: while they fall (the later
// half of the delay had fewer arrivals than the earlier, beyond noise),
// down to the highest demand of the last half delay, so replicas keep up
// with the fall; while they are flat, only replicas above every demand of
// two delays go back (a drained surplus), so that no shrink lands where the
// load turns.
//
// While the service rate is unknown, the rule grows from the backlog, at
// most max(4, current) replicas per decision and only once the replicas
// asked for have consumed for a whole interval, so their rate is learnt
// before more are added.
//
// At most MaxDelta per decision; within Min and Max. A queue that cannot be
// read holds the member; once it has been unreadable for FallbackAfter
// (when set), the member goes to FallbackReplicas at once, whatever
// MaxDelta and the scale-down delay say, until it is read again.
func DecideQueue(p QueuePolicy, in QueueInput, st *QueueState) Decision {
	cur := in.Current
	if p.ScaleUpLimit.Set() || p.ScaleDownLimit.Set() {
		st.trail.observe(in.Now, cur, max(p.ScaleUpLimit.Period, p.ScaleDownLimit.Period))
	}
	if !in.BacklogKnown {
		if st.unreadableSince.IsZero() {
			// Unknown since the last good read; the first failed one when
			// there was none.
			st.unreadableSince = cmp.Or(st.lastRead, in.Now)
		}
		if p.FallbackAfter > 0 && in.Now.Sub(st.unreadableSince) >= p.FallbackAfter {
			return Decision{Replicas: p.FallbackReplicas, Reason: fmt.Sprintf("queue unreadable for %s: fallback-replicas", p.FallbackAfter),
				Held: HeldFallback, Fallback: true}
		}
		return Decision{Replicas: cur, Reason: "queue unreadable: holding", Held: HeldUnreadable}
	}
	st.unreadableSince, st.lastRead = time.Time{}, in.Now
	if p.Wait > 0 && !in.BacklogOnly {
		st.wait.observe(in.Now, in.Arrived, in.Backlog, in.Waiting, in.Consuming, p.Wait)
	}
	r := in.Rates
	arrival := 0.0
	if r.ArrivalKnown {
		arrival = r.Arrival
	}
	known := r.ServiceKnown && r.Service > 0
	above, below := p.bands(in)

	var want, floor int32
	switch {
	case known:
		util := st.utilization(maxUtilization)
		// Growth believes the rate at the top of its uncertainty: a rate
		// read from a few messages that happened to be slow would otherwise
		// ask for replicas that idle once the next reads correct it.
		grow := r.Service * (1 + r.Spread)
		// The floor a shrink stops at leaves a little more room than growth
		// asks for, so that noise in the rates does not take a shrink back.
		var need float64
		if p.Target > 0 {
			need = arrival / (grow * util)
			if in.Backlog > p.Target {
				excess := min(in.Backlog-p.Target, in.Waiting)
				need += float64(max(excess, 0)) / Horizon.Seconds() / grow
			}
			floor = ceilReplicas(arrival / (r.Service * (util - shrinkSlack)))
		}
		if p.Wait > 0 {
			// Headroom from queueing (wait.go), at most the learned
			// utilization busy once a shrink had to be taken back.
			wu := min(maxWaitUtilization, st.utilization(maxWaitUtilization))
			w := st.waitNeed(p, in, arrival, grow, wu)
			// The wait goal is exceeded as soon as the model predicts a
			// miss with the replicas there are: waiting until messages
			// have waited the goal would be too late by a start-up.
			above = above || ceilReplicas(w) > cur
			need = max(need, w)
			floor = max(floor, waitReplicas(arrival, r.Service, waitBudget(p.Wait, st.wait.held, r.Service), wu-shrinkSlack))
		}
		want = ceilReplicas(need)
	case in.Backlog == 0 && r.ArrivalKnown && arrival == 0:
		want, floor = 0, 0 // nothing to do, whatever the rate
	case cur > in.Consuming:
		want, floor = cur, cur // capacity on the way: learn its rate first
	case above && r.Joined > 0:
		// Replicas that consumed for part of the last interval only: learn
		// their rate over a whole one before adding more.
		want, floor = cur, cur
	case above:
		want = cur + max(coldStep, cur)
		if p.Target > 0 {
			want = min(want, max(cur+1, ceilReplicas(float64(in.Backlog)/float64(p.Target))))
		}
		want = int32(min(int64(want), max(in.Backlog, 1)))
		floor = want
	case below && (r.ArrivalKnown || in.BacklogOnly):
		// Nobody can tell how few would do: give back one at a time, each
		// after the scale-down delay, until messages wait and the rate shows.
		want, floor = cur-1, cur-1
	default:
		want, floor = cur, cur
	}
	// Never leave messages with nobody to take them.
	if want < 1 && (in.Backlog > 0 || arrival > 0) {
		want = 1
	}
	switch {
	case want > cur && !above && cur > 0:
		want = cur // grow only while a target is exceeded
	case want < cur && !below:
		want = cur // shrink only at or below 0.7 x every target
	}
	delay := p.ScaleDownDelay
	st.window.add(in.Now, max(floor, 0), cur, in.Arrived, delay)
	held := ""
	free := want // what the load asks before the delay and the limits
	if want < cur {
		surplusFloor := st.window.max(in.Now, 2*delay)
		switch trend, _ := st.window.trend(in.Now, in.Arrived, delay); {
		case trend > 0:
			want = cur // still rising: a shrink would be taken back
		case trend < 0:
			// Falling: down to the highest demand of half the delay, so the
			// replicas keep up with the fall and are where the load is when
			// it turns.
			want = max(want, min(st.window.max(in.Now, delay/2), cur))
		case cur > surplusFloor:
			// Flat, with replicas above every demand of two delays: a
			// drained surplus, given back down to that demand.
			want = max(want, surplusFloor)
		default:
			// Flat after a fall, or a turning point: the shrink would land
			// where the load may turn, so the replicas wait for either.
			want = cur
		}
		if want > free {
			held = HeldDelay
		}
	}
	if c := in.Saturation.Cap; c > 0 && want > c {
		want, held = max(c, p.Min), HeldSaturated
	}
	if p.MaxDelta > 0 {
		if w := min(max(want, cur-p.MaxDelta), cur+p.MaxDelta); w != want {
			want, held = w, HeldMaxDelta
		}
	}
	if w := st.trail.limit(in.Now, cur, want, p.ScaleUpLimit, p.ScaleDownLimit); w != want {
		want, held = w, HeldRateLimit
	}
	switch {
	case want > p.Max:
		want, held = p.Max, HeldMax
	case want < p.Min:
		want, held = p.Min, HeldMin
	case want == p.Min && free < p.Min:
		held = HeldMin // the delay or a limit may hold it too, but min-replicas is the floor either way
	}
	if known {
		st.learn(cur, want, arrival, r.Service)
	}
	if want == cur {
		return Decision{Replicas: want, Held: held, Saturated: in.Saturation} // steady: no reason needed, none built
	}
	why := p.reason(in, want, known, arrival)
	if held == HeldSaturated {
		why = fmt.Sprintf("backlog %d", in.Backlog) + saturatedReason(in.Saturation)
	}
	return Decision{Replicas: want, Reason: why, Held: held, Saturated: in.Saturation}
}

// utilization is the busiest the replicas may be: def until a shrink had
// to be taken back (learn).
func (st *QueueState) utilization(def float64) float64 {
	if st.util == 0 {
		return def
	}
	return st.util
}

// learn lowers the utilization the rule aims at when a shrink to cur is
// taken back while the load is no higher than it was then: cur replicas at
// that utilization could not hold the target, whatever the reason (messages
// held in flight, service times that vary). The next shrink stops above it.
func (st *QueueState) learn(cur, want int32, arrival, service float64) {
	switch {
	case want < cur:
		st.shrunk.to, st.shrunk.arrival, st.shrunk.service, st.shrunk.valid = want, arrival, service, true
	case want > cur && st.shrunk.valid && st.shrunk.to == cur && cur > 0:
		st.shrunk.valid = false
		if arrival <= st.shrunk.arrival*(1+sameLoad) {
			failed := st.shrunk.arrival / (float64(cur) * st.shrunk.service)
			st.util = max(minUtilization, min(st.utilization(maxUtilization), failed*(1-learnMargin)))
		}
	case want > cur:
		st.shrunk.valid = false
	}
}

// sameLoad is how much higher the arrival estimate may be (its noise) for a
// shrink taken back to count against the utilization; learnMargin is how far
// below the utilization that failed the new one is set.
const (
	sameLoad    = 0.15
	learnMargin = 0.05
)

// shrinkSlack is how much less busy than growth aims at a shrink leaves the
// replicas.
const shrinkSlack = 0.05

// minUtilization bounds what learn can lower the utilization to.
const minUtilization = 0.5

// bands says whether the backlog is above a target (grow) and whether it is
// at or below 0.7x of every target (shrink).
func (p QueuePolicy) bands(in QueueInput) (above, below bool) {
	below = true
	if p.Target > 0 {
		above = in.Backlog > p.Target
		below = float64(in.Backlog) <= downBand*float64(p.Target)
	}
	if p.Wait > 0 {
		w, ok := estimatedWait(in)
		if !ok {
			// Without a rate, a message waits as long as any is undelivered.
			above = above || in.Waiting > 0
			below = below && in.Waiting == 0
		} else {
			above = above || w > p.Wait
			below = below && w <= time.Duration(downBand*float64(p.Wait))
		}
	}
	return above, below
}

// estimatedWait is how long the backlog takes to clear at the consuming
// replicas' rate: what a message arriving now waits.
func estimatedWait(in QueueInput) (time.Duration, bool) {
	if !in.Rates.ServiceKnown || in.Rates.Service <= 0 {
		return 0, false
	}
	if in.Backlog == 0 {
		return 0, true
	}
	if in.Consuming == 0 {
		return time.Duration(math.MaxInt64), true
	}
	s := float64(in.Backlog) / (float64(in.Consuming) * in.Rates.Service)
	return time.Duration(min(s, float64(maxWaitSeconds)) * float64(time.Second)), true
}

// maxWaitSeconds bounds estimated waits, so a stalled queue stays representable.
const maxWaitSeconds = 1e6

func (p QueuePolicy) reason(in QueueInput, want int32, known bool, arrival float64) string {
	var why string
	switch {
	case want > in.Current && p.Target > 0 && in.Backlog > p.Target:
		why = fmt.Sprintf("backlog %d > target %d", in.Backlog, p.Target)
	case want > in.Current:
		why = fmt.Sprintf("backlog %d waiting", in.Backlog)
	case p.Target > 0:
		why = fmt.Sprintf("backlog %d <= %.0f%% of target %d", in.Backlog, downBand*100, p.Target)
	default:
		why = fmt.Sprintf("backlog %d", in.Backlog)
	}
	if p.Wait > 0 {
		if w, ok := estimatedWait(in); ok {
			why += fmt.Sprintf(", wait %.1fs against %s", w.Seconds(), p.Wait)
		}
	}
	if !known {
		return why + ", service rate unknown"
	}
	return why + fmt.Sprintf(", in %.1f/s, out %.1f/s per replica", arrival, in.Rates.Service)
}

// ceilReplicas rounds up, tolerating float noise, and bounds the result.
func ceilReplicas(x float64) int32 {
	if math.IsNaN(x) || x <= 0 {
		return 0
	}
	return int32(min(math.Ceil(x-1e-9), math.MaxInt32/2))
}

// windowBuckets bounds the scale-down window's memory whatever its length:
// two delays are cut into at most this many buckets, each keeping the
// highest floor of its span (so the window may hold a value up to
// 1/windowBuckets of two delays longer).
const windowBuckets = 48

// demandWindow keeps the demand of the last two scale-down delays, and the
// arrival count at each bucket's start to tell a rising or falling load.
type demandWindow struct {
	// epoch is the time the buckets' offsets count from: set when the
	// window starts empty, so a bucket keeps 8 bytes of time instead of a
	// time.Time's 24 (48 buckets for each of thousands of members).
	epoch time.Time
	// b is allocated at the first sample, so a member the queue rule never
	// decides (a remainder) keeps none. Copies of a state share the
	// buckets: the caller of DecideGroup keeps the next state and drops
	// the one it handed in.
	b          *[windowBuckets]bucket
	head, size int
}

type bucket struct {
	at       time.Duration // since the window's epoch
	arrived  int64         // cumulative arrivals at the bucket's first sample
	replicas int32
}

// age is how long before now the bucket started.
func (w *demandWindow) age(now time.Time, b bucket) time.Duration {
	return now.Sub(w.epoch) - b.at
}

// add records this tick's floor and arrival count and drops what is older
// than two delays. The first sample holds cur for as long as it stays in
// the window: a controller that just started (or a member just added) has
// seen no demand yet, which is not the same as seeing none.
func (w *demandWindow) add(now time.Time, floor, cur int32, arrived int64, delay time.Duration) {
	if w.size == 0 {
		floor = max(floor, cur)
	}
	keep := 2 * delay
	for w.size > 0 && w.age(now, w.b[w.head]) > keep {
		w.head = (w.head + 1) % windowBuckets
		w.size--
	}
	if w.size > 0 {
		last := &w.b[(w.head+w.size-1)%windowBuckets]
		if w.age(now, *last) < keep/windowBuckets {
			last.replicas = max(last.replicas, floor)
			return
		}
	}
	if w.size == windowBuckets {
		w.head = (w.head + 1) % windowBuckets
		w.size--
	}
	if w.size == 0 {
		w.epoch = now
	}
	if w.b == nil {
		w.b = new([windowBuckets]bucket)
	}
	w.b[(w.head+w.size)%windowBuckets] = bucket{at: now.Sub(w.epoch), replicas: floor, arrived: arrived}
	w.size++
}

// trend compares the messages that arrived in the later half of the last
// delay with the earlier half, at equal lengths: 1 when the later half had
// more by over one standard deviation of Poisson noise (a load still
// growing, which a shrink would have to take back), -1 when it had fewer by
// over three (a fall, not noise), else 0. slope is how fast the arrival
// rate rose from the earlier half to the later (messages per second, each
// second), when it rose (1); else 0.
func (w *demandWindow) trend(now time.Time, arrived int64, delay time.Duration) (dir int, slope float64) {
	first, mid, n := -1, -1, 0
	for i := range w.size {
		b := w.b[(w.head+i)%windowBuckets]
		if w.age(now, b) > delay {
			continue
		}
		if first < 0 {
			first = (w.head + i) % windowBuckets
		}
		n++
		if mid < 0 && b.at-w.b[first].at >= w.age(now, b) {
			mid = (w.head + i) % windowBuckets
		}
	}
	if n < 3 || mid < 0 {
		return 0, 0
	}
	f, m := w.b[first], w.b[mid]
	h1, h2 := (m.at - f.at).Seconds(), w.age(now, m).Seconds()
	n1, n2 := float64(m.arrived-f.arrived), float64(arrived-m.arrived)
	if h1 <= 0 || h2 <= 0 || n1 < 0 || n2 < 0 {
		return 0, 0
	}
	r1, r2 := n1/h1, n2/h2
	// Scale the earlier half's count to the later half's length.
	n1 *= h2 / h1
	noise := math.Sqrt(n1 + n2)
	switch {
	case n2-n1 > noise:
		return 1, (r2 - r1) / ((h1 + h2) / 2)
	case n1-n2 > 3*noise:
		return -1, 0
	}
	return 0, 0
}

// max is the highest floor of the buckets of the last span.
func (w *demandWindow) max(now time.Time, span time.Duration) int32 {
	var m int32
	for i := range w.size {
		if b := w.b[(w.head+i)%windowBuckets]; w.age(now, b) <= span {
			m = max(m, b.replicas)
		}
	}
	return m
}

// trail is a member's replicas over the last period: a sample each time
// they changed, the oldest one the count in force when the period began.
type trail []replicaSample

type replicaSample struct {
	at       time.Time
	replicas int32
}

// maxTrail bounds a trail: a member changed every second for an hour.
const maxTrail = 3600

// observe records replicas at now and forgets what is older than keep
// (but the count in force keep ago).
func (t *trail) observe(now time.Time, replicas int32, keep time.Duration) {
	s := *t
	if len(s) == 0 || s[len(s)-1].replicas != replicas {
		s = append(s, replicaSample{now, replicas})
	}
	drop := 0
	for drop+1 < len(s) && !s[drop+1].at.After(now.Add(-keep)) {
		drop++
	}
	drop = max(drop, len(s)-maxTrail)
	*t = append(s[:0], s[drop:]...)
}

// extremes are the fewest and most replicas in the window of period
// ending at now (the count in force when it began among them).
func (t trail) extremes(now time.Time, period time.Duration) (lo, hi int32) {
	lo, hi = math.MaxInt32, 0
	for i, s := range t {
		if i+1 < len(t) && !t[i+1].at.After(now.Add(-period)) {
			continue // replaced before the window began
		}
		lo, hi = min(lo, s.replicas), max(hi, s.replicas)
	}
	return lo, hi
}

// limit bounds want so that in no window of a limit's period the replicas
// grow (up) or fall (down) by more than it allows: N replicas, or N
// percent of the fewest (for a fall, the most) in the window, at least one.
// A limit never moves want past cur the other way.
func (t trail) limit(now time.Time, cur, want int32, up, down annotations.RateLimit) int32 {
	step := func(l annotations.RateLimit, of int32) int32 {
		if !l.Percent {
			return l.N
		}
		return max(1, int32(math.Ceil(float64(of)*float64(l.N)/100)))
	}
	if want > cur && up.Set() {
		lo, _ := t.extremes(now, up.Period)
		want = max(cur, min(want, lo+step(up, lo)))
	}
	if want < cur && down.Set() {
		_, hi := t.extremes(now, down.Period)
		want = min(cur, max(want, hi-step(down, hi)))
	}
	return want
}
