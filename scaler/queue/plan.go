package queue

import (
	"slices"
	"sync"
)

// Plan keeps what a source works out from a tick's refs (how they split by
// server, the requests they make) and works it out again only when the refs
// differ from the last Read's: the loop names the same queues tick after
// tick, and thousands of them are not worth hashing and sorting every
// second. P must not be changed by its users once built.
type Plan[P any] struct {
	mu   sync.Mutex
	refs []Ref
	plan P
	ok   bool
}

// For is the plan of refs: the last one when refs are the same queues,
// charged to the same namespaces, in the same order; else build's.
func (p *Plan[P]) For(refs []Ref, build func([]Ref) P) P {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ok && slices.EqualFunc(p.refs, refs, sameRef) {
		return p.plan
	}
	// A copy: the caller may reuse its slice; namespaces are never changed
	// in place.
	p.refs = slices.Clone(refs)
	p.plan, p.ok = build(p.refs), true
	return p.plan
}

func sameRef(a, b Ref) bool {
	return a.QueueRef == b.QueueRef && a.Hold == b.Hold && slices.Equal(a.Namespaces, b.Namespaces)
}
