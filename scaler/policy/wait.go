package policy

import (
	"math"
	"time"
)

// A wait goal (target-wait) is a p95 goal: replicas are sized so that the
// predicted 95th percentile of the time a message waits before a consumer
// starts on it stays under it. Two things make a message wait:
//
//   - Queueing. Arrivals are random, so c replicas serving a arrivals'
//     worth of work (a = arrival / service) make messages wait even while
//     c > a; how long depends on c and a together, not on a/c alone (at 2
//     replicas 95% busy means seconds of queueing, at 200 almost none). The
//     rule takes the fewest replicas whose predicted p95 (Erlang C: Poisson
//     arrivals, exponential service, one shared queue) is within the goal.
//   - Prefetch. A consumer holds several messages at once (NSQ's
//     max-in-flight, RabbitMQ's prefetch) and works through them one at a
//     time, so a message delivered to a busy consumer waits behind the
//     others it holds. The rule learns how many a consumer holds from the
//     queue itself (in flight per consuming replica while messages wait)
//     and takes their handling time off the goal.
//
// A backlog already waiting is drained within the goal: each waiting
// message's age is read from the arrivals (the waiting ones are the last
// to arrive), and the replicas must deliver every one that can still be on
// time before its deadline. New replicas deliver nothing until they have
// started (the member's learned start-up); the ones consuming now deliver
// meanwhile. A message that cannot be on time any more (less than
// minSlack left once new replicas have started) is not rushed: it is late
// whatever is spent on it.

// maxWaitUtilization bounds how busy a wait goal lets replicas be however
// many there are: the rates are estimates, and a queue served at the edge
// of its capacity grows without bound on any error in them.
const maxWaitUtilization = 0.98

// waitQuantile is the share of messages the goal holds for.
const waitQuantile = 0.95

// maxErlang bounds the offered load the queueing model is computed for;
// above it the replicas are many enough that queueing is negligible and
// maxWaitUtilization decides.
const maxErlang = 5000

// minSlackShare is the share of the goal a waiting message must have left
// once new replicas have started for the drain to count it.
const minSlackShare = 0.2

// waitReplicas is the fewest replicas, at most maxUtil busy, whose
// predicted p95 wait is within budget, for arrivals per second served at
// service per second per replica. It is 0 when no arrival is known.
func waitReplicas(arrival, service float64, budget time.Duration, maxUtil float64) int32 {
	if arrival <= 0 || service <= 0 {
		return 0
	}
	a := arrival / service
	least := ceilReplicas(a / maxUtil)
	if a > maxErlang || budget <= 0 {
		return least
	}
	// Erlang B by its recursion, B(c) = a B(c-1) / (c + a B(c-1)); Erlang
	// C from it. The first c past a whose tail is within the budget wins.
	b := 1.0
	last := 2*int(least) + 10
	for c := 1; c <= last; c++ {
		b = a * b / (float64(c) + a*b)
		if float64(c) <= a || int32(c) < least {
			continue
		}
		erlangC := float64(c) * b / (float64(c) - a*(1-b))
		// P(wait > t) = C e^{-(c service - arrival) t}.
		if erlangC <= 1-waitQuantile {
			return int32(c)
		}
		t := math.Log(erlangC/(1-waitQuantile)) / (float64(c)*service - arrival)
		if t <= budget.Seconds() {
			return int32(c)
		}
	}
	return int32(last)
}

// waitBudget is the goal less what a message waits inside a consumer
// behind the others it holds, at least minSlackShare of the goal.
func waitBudget(wait time.Duration, held, service float64) time.Duration {
	inside := 0.0
	if held > 1 && service > 0 {
		inside = (held - 1) / service
	}
	return max(time.Duration(float64(wait)-inside*float64(time.Second)), time.Duration(minSlackShare*float64(wait)))
}

// waitState is what a wait goal remembers: the recent arrivals, to tell
// the waiting messages' ages, and how many messages a consumer holds.
type waitState struct {
	// h is a ring of cumulative arrival counts, oldest at head, spaced at
	// least a sixteenth of the goal apart and covering it; allocated at the
	// first read, so a member without a wait goal keeps none (shared by a
	// state's copies as the demand window's buckets are).
	h          *[arrivalSamples]arrivalSample
	head, size int
	// held is how many messages one consuming replica holds at once, as
	// last seen while messages waited (0: not yet seen).
	held float64
}

type arrivalSample struct {
	at      time.Time
	arrived int64
}

const arrivalSamples = 18

// observe records a read: the cumulative arrivals, and, while messages
// wait undelivered, the messages each consuming replica holds.
func (w *waitState) observe(now time.Time, arrived, backlog, waiting int64, consuming int32, wait time.Duration) {
	if waiting > 0 && consuming > 0 && backlog > waiting {
		w.held = max(1, float64(backlog-waiting)/float64(consuming))
	}
	if w.size > 0 {
		last := w.h[(w.head+w.size-1)%arrivalSamples]
		if arrived < last.arrived {
			w.size = 0 // the counter restarted
		} else if now.Sub(last.at) < wait/(arrivalSamples-2) {
			return
		}
	}
	// Keep one sample at least as old as the goal, drop the older.
	for w.size > 1 && now.Sub(w.h[(w.head+1)%arrivalSamples].at) >= wait {
		w.head, w.size = (w.head+1)%arrivalSamples, w.size-1
	}
	if w.size == arrivalSamples {
		w.head, w.size = (w.head+1)%arrivalSamples, w.size-1
	}
	if w.h == nil {
		w.h = new([arrivalSamples]arrivalSample)
	}
	w.h[(w.head+w.size)%arrivalSamples] = arrivalSample{now, arrived}
	w.size++
}

// drainRate is the rate (messages per second) the waiting messages must be
// delivered at, once the new replicas have started after startup, for each
// that can still be on time to start within budget of its arrival; pre
// messages are delivered before then, and arrival more come in per
// second. The waiting messages are the last to have arrived: those that
// arrived between two recorded samples have as many behind them as
// arrived since the first, down to as many as arrived since the second
// (the hardest to deliver in time, counted), and they are as old as the
// middle of the two on average.
func (w *waitState) drainRate(now time.Time, arrived, waiting int64, arrival float64, budget, startup time.Duration, pre float64) float64 {
	if waiting <= 0 {
		return 0
	}
	s := startup.Seconds()
	// Replicas started for a message work at least as long as they took
	// to start, or the message is not worth them.
	minSlack := max(minSlackShare*budget.Seconds(), s)
	// The first message to arrive once the new replicas have started must
	// be on time too, behind whatever is still waiting then: however late
	// the messages waiting now are, they are delivered in time for it.
	rate := max(0, float64(waiting)+arrival*s-pre) / budget.Seconds()
	for i := range w.size {
		sm := w.h[(w.head+i)%arrivalSamples]
		ahead, age := float64(waiting), now.Sub(sm.at).Seconds()/2
		if i+1 < w.size {
			next := w.h[(w.head+i+1)%arrivalSamples]
			ahead -= float64(arrived - next.arrived)
			age += now.Sub(next.at).Seconds() / 2
		}
		if slack := budget.Seconds() - age - s; ahead > 0 && slack >= minSlack {
			rate = max(rate, max(0, ahead-pre)/slack)
		}
	}
	return rate
}

// waitNeed is the replicas a wait goal asks for: the queueing model's for
// the arrivals, or what the waiting messages need to be delivered within
// the goal, whichever is more. service is one replica's rate. The
// replicas consuming deliver meanwhile, those on the way from when they
// are expected to (in.OnWay), and more asked for now after in.Startup.
// While the arrivals rise (over the scale-down delay, beyond their noise),
// the rule sizes for the rate one start-up ahead.
//
// While the replicas there are suffice, what the drain needs is kept with
// a quarter more (drainMargin): a shrink to exactly the rate the deadlines
// need would have to be taken back on the first message that takes
// longer, and replicas taken back cost a start-up. While they do not, none
// of them goes.
func (st *QueueState) waitNeed(p QueuePolicy, in QueueInput, arrival, service, maxUtil float64) float64 {
	budget := waitBudget(p.Wait, st.wait.held, service)
	// Replicas asked for now serve the load of a start-up from now: while
	// it rises, what it will be then.
	if _, slope := st.window.trend(in.Now, in.Arrived, p.ScaleDownDelay); slope > 0 {
		arrival += slope * min(in.Startup, p.Wait).Seconds()
	}
	need := float64(waitReplicas(arrival, service, budget, maxUtil))
	cur := max(in.Current, in.Consuming)
	delivered := func(span time.Duration) float64 { return in.OnWay.replicaSeconds(in.Consuming, cur, span) * service }
	allIn := min(in.OnWay.allIn(), in.Startup)
	if d := st.wait.drainRate(in.Now, in.Arrived, in.Waiting, arrival, budget, allIn, delivered(allIn)); d <= float64(cur)*service {
		return max(need, min(float64(cur), d*(1+drainMargin)/service))
	}
	return max(need, float64(cur), st.wait.drainRate(in.Now, in.Arrived, in.Waiting, arrival, budget, in.Startup, delivered(in.Startup))/service)
}

// drainMargin is how much more than the deadlines need a drain keeps.
const drainMargin = 0.25
