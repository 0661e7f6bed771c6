package policy

import (
	"slices"
	"time"
)

// startup learns how long a member's new replicas take to help: from the
// decision that asked for them (the tick before the replicas were seen
// higher) to when the queue saw that many consuming (between the tick that
// first saw them and the one before: the middle). Pod
// scheduling, image pull, container start and the consumer's own warm-up
// and connection all count. It is the median of the last startupSamples,
// so one slow node does not set it.
type startup struct {
	prevAt  time.Time
	prevCur int32
	// pending are counts asked for and not yet consuming, oldest first.
	pending [startupPending]askedFor
	np      int
	samples [startupSamples]time.Duration
	ns      int // samples kept
	next    int // the slot the next sample takes
}

type askedFor struct {
	at time.Time
	n  int32
}

const (
	startupPending = 8
	startupSamples = 5
	// maxStartup: replicas not consuming this long after they were asked
	// for are not starting (unschedulable, crashing); they are forgotten
	// rather than counted.
	maxStartup = 10 * time.Minute
)

// observe folds one tick in: cur replicas asked for, consuming taking
// messages.
func (s *startup) observe(now time.Time, cur, consuming int32) {
	if !s.prevAt.IsZero() && cur > s.prevCur {
		if s.np == startupPending {
			copy(s.pending[:], s.pending[1:])
			s.np--
		}
		s.pending[s.np] = askedFor{at: s.prevAt, n: cur}
		s.np++
	}
	// They began to consume between the last tick and this one: the middle.
	seen := now
	if !s.prevAt.IsZero() {
		seen = s.prevAt.Add(now.Sub(s.prevAt) / 2)
	}
	s.prevAt, s.prevCur = now, cur
	kept := 0
	for _, p := range s.pending[:s.np] {
		switch {
		case consuming >= min(p.n, cur):
			if p.n <= cur {
				s.add(max(0, seen.Sub(p.at)))
			}
		case now.Sub(p.at) > maxStartup:
		default:
			s.pending[kept] = p
			kept++
		}
	}
	s.np = kept
}

func (s *startup) add(d time.Duration) {
	s.samples[s.next] = d
	s.next = (s.next + 1) % startupSamples
	s.ns = min(s.ns+1, startupSamples)
}

// learned is the median start-up measured; 0 before any was.
func (s *startup) learned() time.Duration {
	if s.ns == 0 {
		return 0
	}
	v := s.samples
	d := v[:s.ns]
	slices.Sort(d)
	return d[(s.ns-1)/2]
}

// expected is how long new replicas are expected to take: the median
// measured, or longer while some asked for have been on the way longer
// (before any was measured, that is all there is to go by).
func (s *startup) expected(now time.Time) time.Duration {
	d := s.learned()
	if s.np > 0 {
		d = max(d, now.Sub(s.pending[0].at))
	}
	return d
}

// onWay is when the replicas asked for and not yet consuming are expected
// to be, each ask at its own time.
func (s *startup) onWay(now time.Time) OnWay {
	var o OnWay
	exp := s.expected(now)
	for _, p := range s.pending[:s.np] {
		o.steps[o.n] = onWayStep{in: max(0, p.at.Add(exp).Sub(now)), replicas: p.n}
		o.n++
	}
	return o
}

// OnWay is a schedule of replicas expected to start consuming: from each
// step's in on, that many replicas consume (steps in order of time).
type OnWay struct {
	steps [startupPending]onWayStep
	n     int
}

type onWayStep struct {
	in       time.Duration
	replicas int32
}

// allIn is how long until every replica on the way is expected to consume.
func (o OnWay) allIn() time.Duration {
	if o.n == 0 {
		return 0
	}
	return o.steps[o.n-1].in
}

// replicaSeconds is how many replica-seconds of consuming the next span
// holds: consuming replicas now, more as the schedule says, never more
// than cur.
func (o OnWay) replicaSeconds(consuming, cur int32, span time.Duration) float64 {
	total, from, n := 0.0, time.Duration(0), min(consuming, cur)
	for _, st := range o.steps[:o.n] {
		if st.in >= span {
			break
		}
		total += float64(n) * (st.in - from).Seconds()
		from, n = st.in, max(n, min(st.replicas, cur))
	}
	return total + float64(n)*(span-from).Seconds()
}
