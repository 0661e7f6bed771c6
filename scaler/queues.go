package scaler

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// readyFirst yields keys in the order their members' queue readings
// complete, so that a group whose hosts hang waits on its own readings and
// never holds a worker that a group with answers could use. Readings that
// cannot tell (no queue.Readiness) yield keys as they are. It waits on the
// reads themselves, one goroutine for each read that groups wait on (most
// groups of a tick wait on the few hosts they share), never polling. The
// channel holds every key, so no sender blocks; all end with ctx at the
// latest, yielding what they held.
func readyFirst(ctx context.Context, keys []string, members map[string][]memberRef, r policy.Readings) <-chan string {
	out := make(chan string, len(keys))
	rd, ok := r.(queue.Readiness)
	if !ok {
		for _, k := range keys {
			out <- k
		}
		return out
	}
	// pending is a read group k still waits on; nil when it waits on none.
	pending := func(k string) <-chan struct{} {
		for _, m := range members[k] {
			if m.st.spec == nil {
				continue
			}
			for _, q := range m.st.spec.Queues {
				if ch := rd.Pending(q); ch != nil {
					return ch
				}
			}
		}
		return nil
	}
	// yield sends the keys ready now and waits on each read the others
	// wait on, trying its keys again when it ends.
	var yield func(keys []string)
	yield = func(keys []string) {
		waiting := map[<-chan struct{}][]string{}
		for _, k := range keys {
			if ch := pending(k); ch == nil {
				out <- k
			} else {
				waiting[ch] = append(waiting[ch], k)
			}
		}
		for ch, ks := range waiting {
			go func() {
				select {
				case <-ch:
					yield(ks)
				case <-ctx.Done():
					for _, k := range ks {
						out <- k
					}
				}
			}()
		}
	}
	yield(keys)
	return out
}

// capHosts keeps, for each namespace naming more queue hosts than
// QueueHostsPerNamespace, the first ones in sorted order (the same every
// tick), and returns the hosts kept for those namespaces.
func (c *Controller) capHosts(hosts map[string]map[string]bool) map[string]map[string]bool {
	limit := c.cfg.QueueHostsPerNamespace
	if limit <= 0 {
		return nil
	}
	var allowed map[string]map[string]bool
	for ns, hs := range hosts {
		if len(hs) <= limit {
			continue
		}
		keep := slices.Sorted(maps.Keys(hs))[:limit]
		if allowed == nil {
			allowed = map[string]map[string]bool{}
		}
		allowed[ns] = map[string]bool{}
		for _, h := range keep {
			allowed[ns][h] = true
		}
	}
	return allowed
}

// queueSet is what a tick reads, built from the members' specs.
type queueSet struct {
	specs   uint64   // Controller.specs it was built at
	refs    tickRefs // the queues to read, by reference
	list    []queue.Ref
	allowed map[string]map[string]bool // see tick.allowedHosts
}

// queueSet lists the queues the members name, each with the namespaces
// naming it, past the per-namespace host cap (capHosts).
func (c *Controller) queueSet(members map[string][]memberRef) *queueSet {
	hosts := map[string]map[string]bool{} // by namespace
	for _, ms := range members {
		for _, m := range ms {
			if m.st.spec == nil {
				continue
			}
			for _, q := range m.st.spec.Queues {
				if hosts[m.d.Namespace] == nil {
					hosts[m.d.Namespace] = map[string]bool{}
				}
				hosts[m.d.Namespace][queue.Target(q)] = true
			}
		}
	}
	s := &queueSet{specs: c.specs, refs: tickRefs{}, allowed: c.capHosts(hosts)}
	for _, ms := range members {
		for _, m := range ms {
			if m.st.spec == nil {
				continue
			}
			for _, q := range m.st.spec.Queues {
				// Rare: some namespace names too many hosts. Its queues on
				// hosts past the bound are not read, unless a namespace
				// within it names them.
				if a := s.allowed[m.d.Namespace]; a == nil || a[queue.Target(q)] {
					s.refs.add(q, m.d.Namespace, m.st.spec.ScaleDownDelay)
				}
			}
		}
	}
	s.list = s.refs.list()
	return s
}

// tickRefs are the queues a tick reads, each with the namespaces that
// name it (its reads are charged to their shares) and the shortest
// scale-down delay of the members naming it.
type tickRefs map[annotations.QueueRef]*tickRef

type tickRef struct {
	namespaces map[string]bool
	hold       time.Duration
}

func (r tickRefs) add(q annotations.QueueRef, namespace string, hold time.Duration) {
	t := r[q]
	if t == nil {
		t = &tickRef{namespaces: map[string]bool{}, hold: hold}
		r[q] = t
	}
	t.namespaces[namespace] = true
	t.hold = min(t.hold, hold)
}

func (r tickRefs) list() []queue.Ref {
	out := make([]queue.Ref, 0, len(r))
	for q, t := range r {
		out = append(out, queue.Ref{QueueRef: q, Namespaces: slices.Sorted(maps.Keys(t.namespaces)), Hold: t.hold})
	}
	return out
}

func covers(read, need tickRefs) bool {
	for q := range need {
		if _, ok := read[q]; !ok {
			return false
		}
	}
	return true
}

// unreadableAfter is how many reads of a member's queues must fail in a
// row before it is told unreadable (Event, condition, gauge). The member
// holds from the first; a lone failure (one slow answer of a busy queue
// server, which fails every member on it at once) is not worth an Event
// and a status write per member, and the two again when the next read
// succeeds.
const unreadableAfter = 2

// readQueues sums a member's queues from the tick's readings, sets its
// backlog gauge, and tells when its queues become unreadable or readable
// again. An unreadable queue holds the member (known false); blip says
// the failure is not told yet (fewer than unreadableAfter in a row).
func (c *Controller) readQueues(m member, t *tick) (sum policy.QueueReading, known, blip bool) {
	var err error
	for _, q := range m.spec.Queues {
		if a := t.allowedHosts[m.d.Namespace]; a != nil && !a[queue.Target(q)] {
			err = fmt.Errorf("queue host %s not read: namespace %s names more than %d queue hosts (each nsqlookupd topic counts as one)", q.Host, m.d.Namespace, c.cfg.QueueHostsPerNamespace)
			break
		}
		var r policy.QueueReading
		if r, err = t.readings.Reading(q); err != nil {
			break
		}
		sum = sum.Plus(r)
	}
	st := m.st
	st.mu.Lock()
	if err == nil {
		st.failedReads = 0
	} else {
		st.failedReads = min(st.failedReads+1, unreadableAfter)
	}
	blip = err != nil && st.failedReads < unreadableAfter
	if !blip {
		st.gauges.Unreadable = err != nil
	}
	if err == nil {
		st.gauges.Backlog, st.gauges.HasBacklog = sum.Backlog, true
	}
	st.mu.Unlock()
	if blip {
		return sum, false, true
	}
	c.exec.Turned(&m.d.Object, &m.st.told, "unreadable", err != nil, func() (string, string, string) {
		return corev1.EventTypeWarning, execute.ReasonQueueUnreadable, fmt.Sprintf("holding at %d replicas: %v", m.cur, err)
	}, func() (string, string, string) {
		return corev1.EventTypeNormal, execute.ReasonQueueReadable, fmt.Sprintf("queue read again: backlog %d", sum.Backlog)
	})
	return sum, err == nil, false
}
