package policy

import "math"

// behindIntervals is how many intervals in a row the backlog must grow above
// its target, with messages waiting and the replicas not growing, before the
// guard compares the service estimate with what the replicas delivered.
const behindIntervals = 5

// guardSlack is how far above what the replicas delivered the estimate may
// be, beyond the count's noise, before the guard overrides it.
const guardSlack = 0.15

// Correction is the guard's override of the service rate: the estimate it
// found wrong and what the consuming replicas delivered instead, each in
// messages per second per replica.
type Correction struct {
	Estimated, Delivered float64
}

// behindGuard watches for a model that is wrong, whatever made it so: a
// backlog above its target that grows interval after interval while
// messages wait undelivered and the replicas asked for stay where they are.
// Over such intervals every consuming replica is busy, so what left the
// queue divided by the consuming replica-seconds is what one replica
// delivers: the service rate, measured without the estimator.
type behindGuard struct {
	last    QueueSample
	lastCur int32
	started bool
	// n counts the behind intervals in a row; done and replicaSeconds sum
	// the messages completed over them and the consuming replicas' time.
	n                    int
	done, replicaSeconds float64
	// fix is the correction in force while the backlog stays above target.
	fix   Correction
	fixed bool
}

// observe folds one read into the guard. above says whether the backlog is
// above a target now; cur is the replicas asked for; service is the
// estimate (0 when unknown). It returns a correction when the guard has
// just found the estimate wrong.
func (g *behindGuard) observe(s QueueSample, cur int32, above bool, service float64) (Correction, bool) {
	if !above {
		g.fixed = false
	}
	if g.started && s.Time.Equal(g.last.Time) {
		// The same figures read again (a server that refreshes them on its
		// own schedule): no interval has passed.
		return Correction{}, false
	}
	prev, prevCur, ok := g.last, g.lastCur, g.started
	g.last, g.lastCur, g.started = s, cur, true
	if !ok {
		return Correction{}, false
	}
	dt := s.Time.Sub(prev.Time).Seconds()
	done := completed(prev, s)
	behind := above && dt > 0 && done >= 0 && s.Arrived >= prev.Arrived &&
		s.Backlog > prev.Backlog && prev.Waiting > 0 && s.Waiting > 0 &&
		cur <= prevCur && s.Consuming > 0 && s.Consuming == prev.Consuming
	if !behind {
		g.n, g.done, g.replicaSeconds = 0, 0, 0
		return Correction{}, false
	}
	g.n++
	g.done += done
	g.replicaSeconds += dt * float64(s.Consuming)
	if g.n < behindIntervals || g.replicaSeconds <= 0 {
		return Correction{}, false
	}
	delivered := g.done / g.replicaSeconds
	noise := 2 / math.Sqrt(max(g.done, 1))
	g.n, g.done, g.replicaSeconds = 0, 0, 0
	if delivered <= 0 || (service > 0 && service <= delivered*(1+guardSlack+noise)) {
		return Correction{}, false // the estimate holds: something else keeps the replicas
	}
	g.fix, g.fixed = Correction{Estimated: service, Delivered: delivered}, true
	return g.fix, true
}

// limit caps a service estimate at what the replicas were seen to deliver,
// for as long as the backlog the guard fired on stays above its target.
func (g *behindGuard) limit(service float64) float64 {
	if g.fixed && service > g.fix.Delivered {
		return g.fix.Delivered
	}
	return service
}
