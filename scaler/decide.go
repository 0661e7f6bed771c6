package scaler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// member is one Deployment's part in a group decision.
type member struct {
	d    *snapshot.Member
	st   *memberState
	spec *annotations.Spec
	cur  int32
	// blip: its queues failed one read, not told (readQueues).
	blip bool
}

// scratch is the memory one group decision reuses: a tick decides every
// group, and allocating each one's slices afresh (10,000 members: megabytes
// a tick) would set how often the collector runs.
type scratch struct {
	ms     []member
	held   []member // left out: another autoscaler scales them
	inputs []policy.MemberInput
	specs  []*annotations.Spec
	policy policy.Scratch
}

var scratches = sync.Pool{New: func() any { return new(scratch) }}

// decide gathers one group's inputs on tick t, decides, and acts.
func (c *Controller) decide(ctx context.Context, key string, gs *groupState, t *tick) {
	sc := scratches.Get().(*scratch)
	defer scratches.Put(sc)
	ms, held := c.gather(key, t, sc.ms[:0], sc.held[:0])
	sc.ms, sc.held = ms, held
	for _, m := range held {
		// Another autoscaler scales it: left alone, shown as held by it.
		m.st.mu.Lock()
		c.recordLocked(key, m, t, dashboard.Status{Replicas: m.cur, Desired: m.cur, Held: execute.HeldConflict})
		m.st.mu.Unlock()
		c.exec.Decided(&m.d.Object, &m.st.told, execute.HeldConflict, m.spec, m.cur, m.cur)
	}
	if len(ms) == 0 {
		return
	}
	n := len(ms)
	sc.inputs, sc.specs = slices.Grow(sc.inputs[:0], n)[:n], slices.Grow(sc.specs[:0], n)[:n]
	in := policy.GroupInput{Now: t.at, Members: sc.inputs, Scratch: &sc.policy}
	specs := sc.specs
	for i, m := range ms {
		specs[i] = m.spec
		m.st.mu.Lock()
		state := m.st.policy
		m.st.mu.Unlock()
		in.Members[i] = policy.MemberInput{Name: m.d.Name, Version: m.d.Version, Spec: m.spec,
			Current: m.cur, Ready: m.d.Ready, State: state}
		if m.spec.Rule == annotations.RuleQueue && !m.spec.Paused {
			in.Members[i].Queue, in.Members[i].QueueKnown, ms[i].blip = c.readQueues(m, t)
		}
		if m.spec.Rule == annotations.RuleRemainder && !m.spec.Paused {
			in.Members[i].NoGrowth = !c.lowPriority(m)
		}
	}
	if policy.NeedsRoom(specs...) {
		room, err := t.snap[key].Room()
		why := ""
		if err == nil {
			in.Room = &room
		} else {
			why = err.Error()
		}
		if why != gs.roomErr {
			gs.roomErr = why
			if why != "" {
				klog.FromContext(ctx).Info("room unknown: remainders hold", "group", key, "err", err)
			} else {
				klog.FromContext(ctx).Info("room known again", "group", key)
			}
		}
	}
	next, out := policy.DecideGroup(in, gs.decision)
	gs.decision = next
	for i, m := range ms {
		m.st.mu.Lock()
		m.st.policy = out.States[i]
		m.st.mu.Unlock()
	}
	if out.BudgetConflict || gs.budgetSaid {
		c.budgetConflict(key, ms, out)
		gs.budgetSaid = out.BudgetConflict
	}
	for i, m := range ms {
		// Held on one failed read, which is not told: its gauges, history
		// and condition stay as the last read left them.
		ms[i].blip = m.blip && out.Decisions[i].Held == policy.HeldUnreadable
		if ms[i].blip {
			continue
		}
		c.exec.Tell(&m.d.Object, &m.st.told, corev1.EventTypeWarning, execute.ReasonEstimateCorrected, correctedMessage(out.Decisions[i].Corrected))
		c.fallback(m, out.Decisions[i].Fallback)
		c.saturation(m, out.Decisions[i].Saturated)
		c.record(key, m, out.Decisions[i], t)
	}
	for _, i := range out.Writes {
		m, d := ms[i], out.Decisions[i]
		if d.Replicas < m.cur && !c.exec.DryRun() {
			c.markIdle(ctx, m)
		}
		if c.exec.Scale(ctx, key, &m.d.Object, &m.st.told, m.cur, d.Replicas, d.Reason) {
			ms[i].cur = d.Replicas
		}
	}
	for i, m := range ms {
		if m.blip {
			continue
		}
		c.exec.Decided(&m.d.Object, &m.st.told, out.Decisions[i].Held, m.spec, m.cur, out.Decisions[i].Replicas)
	}
}

// fallback tells when a member starts and stops being at its
// fallback-replicas.
func (c *Controller) fallback(m member, on bool) {
	c.exec.Turned(&m.d.Object, &m.st.told, "fallback", on, func() (string, string, string) {
		return corev1.EventTypeWarning, execute.ReasonFallbackActive, fmt.Sprintf("queues unreadable for %s: at fallback-replicas %d until they are read again",
			m.spec.FallbackAfter, m.spec.FallbackReplicas)
	}, func() (string, string, string) {
		return corev1.EventTypeNormal, execute.ReasonFallbackEnded, "queues read again: the queue rule decides from here"
	})
}

// saturation tells when a member's replicas start and stop being
// saturated (more stopped adding throughput, confirmed by the knee's own
// measure); a probe above the knee is part of it.
func (c *Controller) saturation(m member, s policy.Saturation) {
	c.exec.Turned(&m.d.Object, &m.st.told, "saturated", s.Saturated, func() (string, string, string) {
		return corev1.EventTypeWarning, execute.ReasonSaturated, fmt.Sprintf(
			"more replicas stopped adding throughput: %d replicas deliver %.1f messages/s together, more delivered no more (a shared downstream's limit?); held at most there (fewer while they deliver as much), the rest of the group's room left to others, and a step above probed every %s",
			s.Knee, s.Ceiling, policy.SaturationHold)
	}, func() (string, string, string) {
		return corev1.EventTypeNormal, execute.ReasonSaturationEnded, "more replicas deliver more again: the queue rule sizes from the load"
	})
}

// correctedMessage tells a correction of the service rate; empty when none
// is in force.
func correctedMessage(c policy.Correction) string {
	if c == (policy.Correction{}) {
		return ""
	}
	est := "unknown"
	if c.Estimated > 0 {
		est = fmt.Sprintf("%.1f/s", c.Estimated)
	}
	return fmt.Sprintf("backlog above target and growing while the replicas stayed: service rate estimated %s per replica, replicas delivered %.1f/s; sizing from what they deliver until the backlog is back at target", est, c.Delivered)
}

// lowPriority reports whether a remainder's pods run below
// RemainderMaxPriority, and tells with a Warning (once while it lasts) when
// they do not: it is then not grown.
func (c *Controller) lowPriority(m member) bool {
	value, class, err := m.d.Priority, m.d.PriorityClass, m.d.PriorityErr
	msg := ""
	switch {
	case err != nil:
		msg = fmt.Sprintf("not growing: its pods' priority is unknown (%v); a remainder needs a PriorityClass with a value of at most %d", err, c.cfg.RemainderMaxPriority)
	case value > c.cfg.RemainderMaxPriority:
		of := "no PriorityClass"
		if class != "" {
			of = "PriorityClass " + class
		}
		msg = fmt.Sprintf("not growing: its pods would run at priority %d (%s), and a remainder takes room from everything at or below its priority in the cluster; give it a PriorityClass with a value of at most %d", value, of, c.cfg.RemainderMaxPriority)
	}
	c.exec.Tell(&m.d.Object, &m.st.told, corev1.EventTypeWarning, execute.ReasonRemainderPriority, msg)
	return msg == ""
}

// gather lists a group's members that have a valid spec, with the replicas
// they ask for now, and tells of replicas someone else set; those another
// autoscaler scales come back apart (held), left out of the decision.
func (c *Controller) gather(key string, t *tick, ms, held []member) ([]member, []member) {
	refs := t.members[key]
	for _, ref := range refs {
		d, st := ref.d, ref.st
		c.mu.RLock()
		spec := st.spec
		c.mu.RUnlock()
		if spec == nil {
			continue // never had valid annotations: left alone
		}
		if c.conflicting(d, st) {
			held = append(held, member{d: d, st: st, spec: spec, cur: d.Replicas})
			continue
		}
		ms = append(ms, member{d: d, st: st, spec: spec, cur: c.exec.Observe(&d.Object, &st.told, spec.Paused)})
	}
	return ms, held
}

// budgetConflict tells each member whose group-max-replicas is not the one
// in force, once per conflict.
func (c *Controller) budgetConflict(key string, ms []member, out policy.GroupOutput) {
	for _, m := range ms {
		msg := ""
		if b := m.spec.GroupMaxReplicas; out.BudgetConflict && b > 0 && b != out.Budget {
			msg = fmt.Sprintf("%s=%d disagrees with another member of group %s; using the smallest, %d", annotations.GroupMaxReplicas, b, key, out.Budget)
		}
		c.exec.Tell(&m.d.Object, &m.st.told, corev1.EventTypeWarning, execute.ReasonGroupBudgetConflict, msg)
	}
}

// markTimeout bounds the pod writes of one scale-down's marks.
const markTimeout = 2 * time.Second

// markIdle marks, with Config.IdleFirst, which of a queue member's pods
// hold the fewest messages, just before its scale-down is written. It is
// a preference, never a condition of the write: when a queue cannot say
// what its consumers hold or a pod cannot be marked, that is told once
// (IdleFirstFailed) and the scale-down goes ahead as it would without it.
func (c *Controller) markIdle(ctx context.Context, m member) {
	h, ok := c.queues.(queue.Holder)
	if c.cfg.IdleFirst == nil || !ok || m.spec.Rule != annotations.RuleQueue {
		return
	}
	var all queue.Holdings
	var errs []string
	answered := false
	for _, q := range m.spec.Queues {
		got, err := h.Held(ctx, m.d.Namespace, q)
		if errors.Is(err, queue.ErrNoHoldings) {
			continue // documented: idle-first follows the queues that say
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s://%s: %v", q.Scheme, q.Host, err))
			continue
		}
		all.Merge(got)
		answered = true
	}
	if !answered && len(errs) == 0 {
		return // none of its queues tells what its consumers hold
	}
	if answered {
		// Bounded: a member of many pods does not hold its group's worker
		// (the marks written by then still steer).
		mctx, cancel := context.WithTimeout(ctx, markTimeout)
		n, err := c.cfg.IdleFirst.Mark(mctx, &m.d.Object, all)
		cancel()
		if err != nil {
			errs = append(errs, err.Error())
		}
		klog.FromContext(ctx).V(2).Info("marked idle consumers first", "deployment", klog.KRef(m.d.Namespace, m.d.Name), "pods", n, "consumers", len(all.ByHostname))
	}
	msg := ""
	if len(errs) > 0 {
		msg = "scale-down not steered to idle consumers: " + strings.Join(errs, "; ")
	}
	c.exec.Tell(&m.d.Object, &m.st.told, corev1.EventTypeWarning, execute.ReasonIdleFirstFailed, msg)
}
