package policy

import (
	"fmt"
	"math"
	"time"
)

// Saturation: consumers that all write to one database, call one
// rate-limited API or contend on one lock stop adding throughput past some
// count. The rule sizes replicas from arrival / service, and the service
// rate of each falls as more share the limit, so without this it would run
// to max-replicas and take the room the group's remainder needs.
//
// What the consuming replicas deliver together is measured over the
// intervals where all of them were busy (messages waited undelivered
// throughout), kept for tputWindow. Once the replicas consuming now have
// been busy at that count for tputSettle (new ones have warmed up), they
// are compared with fewer: at most 1/tputSpan as many, by the same
// measure. When they deliver less than tputGainShare of the gain that many
// more would add at the fewer's rate, the replicas are saturated. The knee
// is the throughput they reach divided by the best service rate of one
// replica seen in the window (a linear rise to a ceiling): the rule grows
// no further than it, and replicas above it go back. After tputHold it
// probes a bounded step above the knee; a probe that delivers more ends the
// saturation, one that does not holds the knee again.
const (
	tputWindow    = 90 * time.Second
	tputIntervals = 96 // at most, the oldest dropped first
	tputSettle    = 5.0
	tputSpan      = 1.25
	tputGainShare = 0.25
	// tputMinLow is the least busy time and messages the fewer replicas
	// must have been measured over.
	tputMinLow  = 3.0
	tputMinMsgs = 30
	tputHold    = SaturationHold
)

// SaturationHold is how long a saturation holds the knee before a step
// above it is probed.
const SaturationHold = 2 * time.Minute

// Saturation is the saturation verdict a decision takes.
type Saturation struct {
	// Cap bounds the replicas (0: no bound): the knee while saturated, a
	// step above it while probing, fewer while they are tried (the first
	// trial, before Saturated, tells whether it is a saturation at all).
	Cap int32
	// Saturated: more replicas stopped adding throughput; Knee replicas
	// deliver Ceiling messages per second together (Cap may be fewer,
	// tried while they may reach it too).
	Saturated bool
	Knee      int32
	Ceiling   float64
}

// saturatedReason tells a decision bounded by s.
func saturatedReason(s Saturation) string {
	switch {
	case !s.Saturated:
		return fmt.Sprintf(", trying %d replicas: more added little throughput", s.Cap)
	case s.Cap > s.Knee:
		return fmt.Sprintf(", probing %d replicas, a step above a saturation", s.Cap)
	}
	return fmt.Sprintf(", saturated: %d replicas deliver %.1f/s together, more delivered no more", s.Knee, s.Ceiling)
}

// busyInterval is one interval over which all the consuming replicas were
// busy: n of them on average (steady: the same at both ends) finished
// done messages in dt seconds; service was one replica's estimated rate
// then.
type busyInterval struct {
	at      time.Time
	n       float32
	steady  bool
	done    float32
	dt      float32
	service float32
}

// throughputs measures what the consuming replicas deliver together, and
// remembers a saturation found. Its window is made on the first busy
// interval and dropped once none is left in it: a member that never waits
// costs nothing.
type throughputs struct {
	w *[tputIntervals]busyInterval
	// head is the next slot; size counts the intervals kept.
	head, size int
	// knee bounds the replicas (0: nothing does): the knee held until
	// probing may start, or while trying, the fewer being tried until
	// then. ceiling is what the replicas were measured to deliver.
	knee    int32
	ceiling float64
	until   time.Time
	// trying: knee is being measured; good is the fewest known to reach
	// the ceiling; since is when the first trial began. confirmed: a
	// trial reached the ceiling (the saturation is told).
	trying, confirmed bool
	good              int32
	since             time.Time
}

// observe folds the interval from prev to s in, when all the replicas
// consuming were busy throughout: service (known) is one replica's
// estimated rate, which tells how many waiting messages keep them busy;
// without it, messages must have waited at both ends.
func (t *throughputs) observe(prev, s QueueSample, service float64, known bool) {
	n := max(s.Consuming, prev.Consuming)
	dt := s.Time.Sub(prev.Time).Seconds()
	done := completed(prev, s)
	if min(s.Consuming, prev.Consuming) <= 0 || dt <= 0 || done < 0 || s.Arrived < prev.Arrived {
		return
	}
	busy := prev.Waiting > 0 && s.Waiting > 0
	if known {
		expect := service * dt * float64(n)
		busy = float64(prev.Waiting) >= expect+3*math.Sqrt(expect)
	}
	if !busy {
		return
	}
	if t.w == nil {
		t.w = new([tputIntervals]busyInterval)
	}
	if !known {
		service = 0
	}
	t.w[t.head] = busyInterval{at: s.Time, n: float32(s.Consuming+prev.Consuming) / 2, steady: s.Consuming == prev.Consuming,
		done: float32(done), dt: float32(dt), service: float32(service)}
	t.head = (t.head + 1) % tputIntervals
	t.size = min(t.size+1, tputIntervals)
}

// each calls f on the kept intervals of the window ending at now, newest
// first, until f returns false; it drops the window when none is left.
func (t *throughputs) each(now time.Time, f func(busyInterval) bool) {
	for i := range t.size {
		b := t.w[(t.head-1-i+tputIntervals)%tputIntervals]
		if now.Sub(b.at) > tputWindow {
			t.size = i
			break
		}
		if !f(b) {
			return
		}
	}
	if t.size == 0 {
		t.w, t.head = nil, 0
	}
}

// verdict says, at now, whether the replicas are saturated (held at the
// knee), probing a step above it, or free.
func (t *throughputs) verdict(now time.Time) Saturation {
	top, topN, ok := t.settled(now)
	if t.knee > 0 && !t.trying && t.size == 0 && now.After(t.until) {
		// Not busy for a whole window since: nothing stands against more
		// replicas any longer; found again if it is still there.
		*t = throughputs{}
	}
	if t.trying && !now.Before(t.until) {
		// The fewer tried were never measured (the load asked for fewer
		// still).
		if t.confirmed {
			t.knee, t.trying, t.until = t.good, false, now.Add(tputHold)
		} else {
			t.knee, t.trying = 0, false
		}
	}
	if t.trying && ok && topN == t.knee {
		switch {
		case top >= t.ceiling*(1-tputGainShare*(1-float64(t.knee)/float64(t.good))):
			// Fewer deliver as much: saturated, and fewer still are tried.
			t.ceiling, t.good, t.confirmed = max(t.ceiling, top), t.knee, true
			if next := int32(float64(t.knee) / tputSpan); next >= 1 && next < t.knee {
				t.knee = next
			} else {
				t.trying = false
			}
			t.until = now.Add(tputHold)
		case t.confirmed:
			t.knee, t.trying, t.until = t.good, false, now.Add(tputHold)
		default:
			// The knee delivers less than more did: more replicas do help
			// (consumers that slowed down, not a limit). What was measured
			// before the trial misled: it is forgotten.
			t.forget(t.since)
			t.knee, t.trying = 0, false
			return Saturation{}
		}
	}
	if t.trying || (t.knee > 0 && now.Before(t.until)) {
		return t.held()
	}
	if !ok {
		if t.knee > 0 {
			return t.probe()
		}
		return Saturation{}
	}
	if knee, ok := t.saturated(now, top, topN); ok {
		// Confirmed only once the knee itself is measured to reach the
		// ceiling: until then the replicas are bounded, nothing is told.
		t.knee, t.ceiling, t.good, t.trying, t.confirmed = knee, top, topN, true, t.confirmed && t.knee > 0
		t.since, t.until = now, now.Add(tputHold)
		return t.held()
	}
	if t.knee > 0 && topN > t.knee && top >= t.ceiling*(1+tputGainShare*(float64(topN)/float64(t.knee)-1)) {
		// The probe delivered more: the limit moved.
		*t = throughputs{w: t.w, head: t.head, size: t.size}
	}
	if t.knee > 0 {
		return t.probe()
	}
	return Saturation{}
}

// held bounds the replicas at the knee, or at the fewer being tried; Knee
// is the fewest known to reach the ceiling. Saturated once confirmed.
func (t *throughputs) held() Saturation {
	knee := t.knee
	if t.trying {
		knee = t.good
	}
	return Saturation{Cap: t.knee, Saturated: t.confirmed, Knee: knee, Ceiling: t.ceiling}
}

// probe bounds the replicas a step above a confirmed knee.
func (t *throughputs) probe() Saturation {
	return Saturation{Cap: t.knee + max(1, t.knee/4), Saturated: true, Knee: t.knee, Ceiling: t.ceiling}
}

// forget drops the intervals measured before since.
func (t *throughputs) forget(since time.Time) {
	kept := 0
	t.each(since, func(b busyInterval) bool {
		if b.at.Before(since) {
			return false
		}
		kept++
		return true
	})
	t.size = kept
	if t.size == 0 {
		t.w, t.head = nil, 0
	}
}

// settled is the throughput of the replicas consuming now, measured over
// the newest intervals at their count when those cover tputSettle.
func (t *throughputs) settled(now time.Time) (total float64, n int32, ok bool) {
	var done, secs float64
	t.each(now, func(b busyInterval) bool {
		if n == 0 {
			n = int32(b.n)
		}
		if !b.steady || int32(b.n) != n {
			return false
		}
		done, secs = done+float64(b.done), secs+float64(b.dt)
		return true
	})
	if secs < tputSettle || done < tputMinMsgs {
		return 0, 0, false
	}
	return done / secs, n, true
}

// saturated compares topN replicas delivering top with the fewer measured
// in the window, and finds the knee: top over the best rate of one
// replica, the higher of the estimates seen and what the fewest replicas
// measured delivered each.
func (t *throughputs) saturated(now time.Time, top float64, topN int32) (int32, bool) {
	var done, secs, replicaSecs, best float64
	fewest := float32(math.MaxFloat32)
	low := func(b busyInterval) bool { return b.n*tputSpan <= float32(topN) && b.n <= float32(topN-1) }
	t.each(now, func(b busyInterval) bool {
		best = max(best, float64(b.service))
		if low(b) {
			done, secs, replicaSecs = done+float64(b.done), secs+float64(b.dt), replicaSecs+float64(b.n)*float64(b.dt)
			fewest = min(fewest, b.n)
		}
		return true
	})
	if secs < tputMinLow || done < tputMinMsgs {
		return 0, false
	}
	if top >= done/secs*(1+tputGainShare*(float64(topN)/(replicaSecs/secs)-1)) {
		return 0, false
	}
	var fewDone, fewReplicaSecs float64
	t.each(now, func(b busyInterval) bool {
		if low(b) && b.n <= fewest*tputSpan {
			fewDone, fewReplicaSecs = fewDone+float64(b.done), fewReplicaSecs+float64(b.n)*float64(b.dt)
		}
		return true
	})
	best = max(best, fewDone/fewReplicaSecs)
	return max(1, min(ceilReplicas(top/best), topN-1)), true
}
