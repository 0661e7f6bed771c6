package scaler

import (
	"fmt"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/policy"
)

// record sets a member's gauges to the group's decision and adds it, with
// the member's status, to the dashboard's history.
func (c *Controller) record(group string, m member, d policy.Decision, t *tick) {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	g := &m.st.gauges
	g.Desired, g.Current, g.Decided = d.Replicas, m.cur, true
	g.Group, g.Rule, g.Priority, g.Paused = m.spec.Group, string(m.spec.Rule), m.spec.Priority, m.spec.Paused
	g.Target, g.HasTarget = m.spec.TargetQueueLength, m.spec.TargetQueueLength > 0
	g.Min, g.Max, g.Held, g.Fallback = m.spec.MinReplicas, m.spec.MaxReplicas, d.Held, d.Fallback
	s := dashboard.Status{Replicas: m.cur, Desired: d.Replicas, Target: m.spec.TargetQueueLength, Held: d.Held}
	if m.spec.TargetWait > 0 {
		s.TargetWait = m.spec.TargetWait.String()
	}
	if m.spec.Rule == annotations.RuleQueue && g.HasBacklog && !g.Unreadable {
		s.Backlog, s.BacklogKnown = g.Backlog, true
	}
	r := &m.st.policy.Rates
	s.Arrival, s.ArrivalKnown = r.Arrival, r.ArrivalKnown
	s.Service, s.ServiceKnown = r.Service, r.ServiceKnown
	if fix := d.Corrected; fix != (policy.Correction{}) {
		s.Service, s.ServiceKnown = fix.Delivered, true
		s.Corrected = fmt.Sprintf("service rate corrected: estimated %.1f/s, delivered %.1f/s per replica", fix.Estimated, fix.Delivered)
	}
	g.Arrival, g.HasArrival, g.Service, g.HasService = s.Arrival, s.ArrivalKnown, s.Service, s.ServiceKnown
	if su := m.st.policy.Startup(); su > 0 {
		s.Startup = su.Round(100 * time.Millisecond).String()
	}
	if d.Replicas != m.cur && d.Reason != "" {
		s.Reason, s.ReasonAt = fmt.Sprintf("%d -> %d: %s", m.cur, d.Replicas, d.Reason), t.at.UnixMilli()
	}
	c.recordLocked(group, m, t, s)
}

// recordLocked adds a member's point and status to the history; m.st.mu
// is held.
func (c *Controller) recordLocked(group string, m member, t *tick, s dashboard.Status) {
	if m.st.hist == nil {
		m.st.hist = c.cfg.History.Member(m.d.Namespace, m.d.Name)
	}
	c.cfg.History.Record(m.st.hist, group, string(m.spec.Rule), m.spec.Priority, dashboard.Point{
		T: t.at.UnixMilli(), Backlog: float64(m.st.gauges.Backlog), Target: float64(m.spec.TargetQueueLength), Desired: s.Desired, Current: s.Replicas}, s)
}
