package scaler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
)

type memberKey struct{ namespace, name string }

// memberState is what the controller remembers of one Deployment.
type memberState struct {
	// Listing fields, guarded by Controller.mu: set while the tick lists
	// the members.
	parsed uint64            // the snapshot's Parsed last looked at: unchanged, nothing new to tell
	ann    map[string]string // the annotations last parsed (the snapshot's: no copy)
	spec   *annotations.Spec // the last good spec, never changed in place; nil while there was none
	seen   uint64            // the last tick that listed it

	// mu guards the rest, which the member's group decision and Collect use.
	mu     sync.Mutex
	policy policy.MemberState
	// hpa: another autoscaler targeted it at the last look; owned by the
	// tick that decides its group.
	hpa    bool
	hist   *dashboard.MemberHistory
	gauges metrics.Gauges
	// failedReads counts the reads of its queues that failed in a row, up
	// to unreadableAfter.
	failedReads int

	// told is what the executor told and wrote of it (its own lock).
	told execute.Memory
}

// state returns the remembered state of d, marked seen on this tick,
// taking in its spec when its annotations were parsed again. A bad value
// is reported once per change with a Warning Event per key; the last good
// spec stays in force.
func (c *Controller) state(ctx context.Context, d *snapshot.Member) *memberState {
	key := memberKey{d.Namespace, d.Name}
	c.mu.Lock()
	st, ok := c.members[key]
	if !ok {
		st = &memberState{}
		c.members[key] = st
	}
	st.seen = c.ticks
	if ok && st.parsed == d.Parsed {
		c.mu.Unlock()
		return st
	}
	before := st.ann
	st.parsed, st.ann = d.Parsed, d.Annotations
	c.mu.Unlock()
	err := d.Problem
	if removed := removedDefining(before, d.Annotations); err != nil && st.spec != nil && len(removed) > 0 {
		// Taking away what made it managed is a release, not a mistake to
		// keep the last settings through.
		c.mu.Lock()
		st.spec = nil
		c.specs++
		c.mu.Unlock()
		st.mu.Lock()
		st.gauges = metrics.Gauges{}
		st.mu.Unlock()
		st.told.ForgetWrite()
		c.cfg.History.Forget(d.Namespace, d.Name)
		c.exec.Release(&d.Object, removed)
		klog.FromContext(ctx).Info("released", "deployment", klog.KRef(d.Namespace, d.Name), "removed", removed)
		return st
	}
	if err != nil {
		kept := "the Deployment is left alone"
		if st.spec != nil {
			kept = "the last good settings stay in force"
		} else {
			c.exec.SetCondition(&d.Object, condition.Condition{Status: corev1.ConditionFalse, Reason: execute.ReasonInvalidAnnotation,
				Message: "microscaling.com/ annotations invalid (this Deployment's Events say which): the Deployment is left alone"})
		}
		for _, fe := range annotations.FieldErrors(err) {
			key := fe.Key // a label value: only the contract's keys, never a tenant's typo
			if !slices.Contains(annotations.Keys, key) {
				key = "unknown"
			}
			c.metrics.AnnotationErrors.WithLabelValues(d.Namespace, d.Name, key).Inc()
			c.exec.Event(&d.Object, corev1.EventTypeWarning, execute.ReasonInvalidAnnotation, fe.Error()+"; "+kept)
		}
		klog.FromContext(ctx).V(2).Info("invalid annotations", "deployment", klog.KRef(d.Namespace, d.Name), "err", err)
		st.mu.Lock()
		st.gauges.Invalid = true
		st.mu.Unlock()
		return st
	}
	c.mu.Lock()
	st.spec = d.Spec
	c.specs++
	c.mu.Unlock()
	st.mu.Lock()
	st.gauges.Invalid = false
	st.mu.Unlock()
	return st
}

// removedDefining lists the keys that make a Deployment managed (rule,
// queue, group) that before had and now does not.
func removedDefining(before, now map[string]string) []string {
	var out []string
	for _, k := range []string{annotations.Rule, annotations.Queue, annotations.Group} {
		if _, had := before[k]; had {
			if _, has := now[k]; !has {
				out = append(out, k)
			}
		}
	}
	return out
}

// forgetUnseen drops the state of members the current tick did not list.
// One that still exists lost what made it managed: it is told it is
// released.
func (c *Controller) forgetUnseen() {
	type gone struct {
		key     memberKey
		ann     map[string]string
		managed bool // had a good spec: told it is released
	}
	var released []gone
	c.mu.Lock()
	for k, st := range c.members {
		if st.seen != c.ticks {
			delete(c.members, k)
			c.metrics.Forget(k.namespace, k.name)
			c.cfg.History.Forget(k.namespace, k.name)
			c.exec.Forget(k.namespace, k.name)
			released = append(released, gone{k, st.ann, st.spec != nil})
			if st.spec != nil {
				c.specs++
			}
		}
	}
	c.mu.Unlock()
	for _, g := range released {
		d, ok := c.cluster.Object(g.key.namespace, g.key.name)
		switch {
		case !ok || annotations.Managed(d.Annotations):
		case g.managed:
			c.exec.Release(&d, removedDefining(g.ann, d.Annotations))
		default:
			c.exec.Clear(&d) // it never had good settings: nothing to tell
		}
	}
}

// conflicting reports whether another autoscaler targets d, in which case
// d is left out of its group's decision (its pods count as anyone else's),
// told once with a Warning and a gauge, and taken back with a Normal Event
// when the other goes. In a dry run d is decided anyway, as a shadow of the
// other autoscaler, and nothing is written.
func (c *Controller) conflicting(d *snapshot.Member, st *memberState) bool {
	hpas := d.Autoscalers
	if len(hpas) == 0 && !st.hpa {
		return false // the common case: nothing to tell
	}
	st.hpa = len(hpas) > 0
	dry := c.exec.DryRun()
	st.mu.Lock()
	st.gauges.Conflicting = st.hpa && !dry
	st.mu.Unlock()
	if st.hpa && !dry {
		st.told.ForgetWrite() // its replicas are the other's now: no ExternalScale when it goes
	}
	switch {
	case st.hpa && dry:
		c.exec.Tell(&d.Object, &st.told, corev1.EventTypeNormal, execute.ReasonConflictingScaler, fmt.Sprintf(
			"dry run: deciding beside HorizontalPodAutoscaler %s, which scales this Deployment; ScaledDryRun Events say what microscaling would do", strings.Join(hpas, ", ")))
		return false
	case st.hpa:
		c.exec.Tell(&d.Object, &st.told, corev1.EventTypeWarning, execute.ReasonConflictingScaler, fmt.Sprintf(
			"left alone: HorizontalPodAutoscaler %s also scales this Deployment; delete it (or remove the microscaling.com/ annotations) so that one autoscaler decides", strings.Join(hpas, ", ")))
		return true
	}
	c.exec.Tell(&d.Object, &st.told, corev1.EventTypeWarning, execute.ReasonConflictingScaler, "")
	c.exec.Event(&d.Object, corev1.EventTypeNormal, execute.ReasonAutoscalerGone, "no other autoscaler targets this Deployment any more: microscaling scales it again")
	return false
}

// EachMember gives every member's gauges as its last decision left them;
// it makes the Controller the metrics package's Source.
func (c *Controller) EachMember(f func(namespace, name string, g metrics.Gauges)) {
	c.mu.RLock()
	keys := make([]memberKey, 0, len(c.members))
	states := make([]*memberState, 0, len(c.members))
	for k, st := range c.members {
		keys, states = append(keys, k), append(states, st)
	}
	c.mu.RUnlock()
	for i, st := range states {
		st.mu.Lock()
		g := st.gauges
		st.mu.Unlock()
		f(keys[i].namespace, keys[i].name, g)
	}
}
