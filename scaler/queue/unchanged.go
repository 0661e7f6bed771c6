package queue

import (
	"sync"
	"time"
)

// Unchanged times figures that a server refreshes on its own schedule (a
// management API's statistics interval, a Prometheus scrape): figures read
// again unchanged keep the time they were first read, so that a rate is
// measured over the interval the server counted, not over the reads. For
// at most Hold, though: figures that stay the same longer are a queue at
// rest (nothing arrives, nothing is done), and a reading must say so, or
// the last rate seen would be believed forever.
type Unchanged[K, V comparable] struct {
	Hold time.Duration

	mu   sync.Mutex
	seen map[K]shown[V]
}

type shown[V comparable] struct {
	v V
	// first and last are the first and last reads that showed v; before
	// is the last read that showed the value before it (zero: none).
	first, last, before time.Time
}

// Since records v read for k at now and returns when k first showed v,
// and how early the server may have changed to v: just after the last read
// that showed the value before (zero when no earlier read tells).
func (u *Unchanged[K, V]) Since(k K, v V, now time.Time) (first, earliest time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen == nil {
		u.seen = map[K]shown[V]{}
	}
	s, ok := u.seen[k]
	switch {
	case !ok || now.Sub(s.first) > u.Hold:
		s = shown[V]{v: v, first: now}
	case s.v != v:
		s = shown[V]{v: v, first: now, before: s.last}
	}
	s.last = now
	u.seen[k] = s
	return s.first, s.before
}

// Forget drops the keys not read for ForgetAfter.
func (u *Unchanged[K, V]) Forget(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, s := range u.seen {
		if now.Sub(s.last) > ForgetAfter {
			delete(u.seen, k)
		}
	}
}
