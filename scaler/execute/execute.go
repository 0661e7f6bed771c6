// Package execute is the loop's one writer: it owns a member's /scale write
// (and its conflicts), its durable condition, every Event the loop records
// on a member (the reasons are the constants below), the memory of what was
// told once, and the write metrics. The loop decides; this package acts and
// remembers what it did.
package execute

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/metrics"
)

// Event reasons, on the Deployment.
const (
	ReasonScaled              = "Scaled"
	ReasonScaledDryRun        = "ScaledDryRun"
	ReasonScaleFailed         = "ScaleFailed"
	ReasonExternalScale       = "ExternalScale"
	ReasonInvalidAnnotation   = "InvalidAnnotation"
	ReasonQueueUnreadable     = "QueueUnreadable"
	ReasonQueueReadable       = "QueueReadable"
	ReasonGroupBudgetConflict = "GroupBudgetConflict"
	ReasonConflictingScaler   = "ConflictingAutoscaler"
	ReasonAutoscalerGone      = "AutoscalerGone"
	ReasonReleased            = "Released"
	ReasonRemainderPriority   = "RemainderPriority"
	ReasonEstimateCorrected   = "EstimateCorrected"
	ReasonFallbackActive      = "FallbackActive"
	ReasonFallbackEnded       = "FallbackEnded"
	ReasonSaturated           = "ThroughputSaturated"
	ReasonSaturationEnded     = "ThroughputRecovered"
	ReasonIdleFirstFailed     = "IdleFirstFailed"
)

// Writer sets a Deployment's replicas.
type Writer interface {
	Scale(ctx context.Context, d *snapshot.Object, replicas int32) error
}

// Config is what an Executor writes through.
type Config struct {
	Writer   Writer
	Recorder record.EventRecorder
	// Metrics counts the writes (ScaleOps).
	Metrics *metrics.Metrics
	// Conditions, when set, keeps each member's condition on its Deployment.
	Conditions Conditions
	// History, when set, keeps the writes for the dashboard.
	History *dashboard.History
	// DryRun tells each write instead of making it.
	DryRun bool
}

// Executor acts on decisions. It is safe for concurrent use; what it
// remembers of a member lives in that member's Memory.
type Executor struct {
	cfg   Config
	clock clock.Clock
}

// New makes an Executor.
func New(cfg Config, clk clock.Clock) *Executor {
	return &Executor{cfg: cfg, clock: clk}
}

// DryRun reports whether writes are told instead of made.
func (e *Executor) DryRun() bool { return e.cfg.DryRun }

// Memory is what the executor remembers of one member: what it told and
// what it wrote. The caller keeps one per Deployment (the zero value is
// ready) and drops it with the member.
type Memory struct {
	mu   sync.Mutex
	told map[string]string // by topic: the last thing told; absent: nothing
	// written is the replica count last written; a different spec.replicas
	// later means someone else scaled the Deployment.
	written    int32
	hasWritten bool
	// staleRV is the resourceVersion the last write replaced: while the
	// cache still shows it, the cache has not caught up with the write.
	staleRV string
	// last tells the last write: from, to, when, why.
	last string
	// cond is the condition last decided, built from condOf: built again
	// only when they change (a decision a tick, the same most ticks).
	cond   condition.Condition
	condOf condInputs
}

// condInputs is what a member's condition is built from.
type condInputs struct {
	held         string
	spec         *annotations.Spec // never changed in place: a new spec is a new pointer
	cur, desired int32
	last         string
}

// swap sets topic to value and returns what it was: the one memory behind
// everything told once.
func (m *Memory) swap(topic, value string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	was := m.told[topic]
	switch {
	case value == was:
	case value == "":
		delete(m.told, topic)
	default:
		if m.told == nil {
			m.told = map[string]string{}
		}
		m.told[topic] = value
	}
	return was
}

// Event records an Event on d.
func (e *Executor) Event(d *snapshot.Object, typ, reason, msg string) {
	e.cfg.Recorder.Event(ref(d), typ, reason, msg)
}

// ref is d as the object an Event is about.
func ref(d *snapshot.Object) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Deployment", APIVersion: "apps/v1", Namespace: d.Namespace, Name: d.Name, UID: d.UID, ResourceVersion: d.Version}
}

// Tell records msg on d under reason when it differs from what was last
// told under reason; an empty msg clears it, so the next one is told again.
func (e *Executor) Tell(d *snapshot.Object, m *Memory, typ, reason, msg string) {
	if m.swap(reason, msg) != msg && msg != "" {
		e.Event(d, typ, reason, msg)
	}
}

// Turned records on (or off) when the member's state named topic turns on
// (or off). The events are built only when they are told.
func (e *Executor) Turned(d *snapshot.Object, m *Memory, topic string, now bool, on, off func() (typ, reason, msg string)) {
	v := ""
	if now {
		v = "on"
	}
	was := m.swap(topic, v)
	switch {
	case now && was == "":
		typ, reason, msg := on()
		e.Event(d, typ, reason, msg)
	case !now && was != "":
		typ, reason, msg := off()
		e.Event(d, typ, reason, msg)
	}
}

// SetCondition keeps cond on d, when conditions are kept.
func (e *Executor) SetCondition(d *snapshot.Object, cond condition.Condition) {
	if e.cfg.Conditions != nil {
		e.cfg.Conditions.Set(d, cond)
	}
}

// Decided keeps on d the condition of a decision that wants desired
// replicas, held by the Held word h (empty: nothing holds it).
func (e *Executor) Decided(d *snapshot.Object, m *Memory, h string, spec *annotations.Spec, cur, desired int32) {
	if e.cfg.Conditions == nil {
		return
	}
	m.mu.Lock()
	in := condInputs{held: h, spec: spec, cur: cur, desired: desired, last: m.last}
	if in != m.condOf || m.cond == (condition.Condition{}) {
		m.cond, m.condOf = conditionFor(h, spec, cur, desired, m.last), in
	}
	c := m.cond
	m.mu.Unlock()
	e.cfg.Conditions.Set(d, c)
}

// Release tells that d is no longer scaled because the keys that made it
// managed were removed; its replicas stay as they are.
func (e *Executor) Release(d *snapshot.Object, removed []string) {
	e.Clear(d)
	e.cfg.Recorder.Eventf(ref(d), corev1.EventTypeNormal, ReasonReleased, "%s removed: microscaling no longer scales this Deployment; its replicas stay as they are", strings.Join(removed, ", "))
}

// Clear removes d's condition, when conditions are kept.
func (e *Executor) Clear(d *snapshot.Object) {
	if e.cfg.Conditions != nil {
		e.cfg.Conditions.Clear(d)
	}
}

// Forget drops what is kept of namespace/name's condition.
func (e *Executor) Forget(namespace, name string) {
	if e.cfg.Conditions != nil {
		e.cfg.Conditions.Forget(namespace, name)
	}
}

// ForgetWrite forgets the member's last write: its replicas are someone
// else's now, and a change of them is not an ExternalScale.
func (m *Memory) ForgetWrite() {
	m.mu.Lock()
	m.hasWritten = false
	m.mu.Unlock()
}

// Observe returns the replicas a member has, given d.Replicas in the
// cache: the count last written while the cache still shows the object the write
// replaced. A count someone else set since the last write is told once
// (ExternalScale); the decision then starts from it.
func (e *Executor) Observe(d *snapshot.Object, m *Memory, paused bool) int32 {
	cur := d.Replicas
	m.mu.Lock()
	if m.hasWritten && d.Version == m.staleRV {
		cur = m.written // the cache lags behind our own write
	}
	external, prev := m.hasWritten && m.written != cur, m.written
	if external {
		m.written = cur // report each outside change once
	}
	m.mu.Unlock()
	switch {
	case !external:
	case paused:
		e.cfg.Recorder.Eventf(ref(d), corev1.EventTypeNormal, ReasonExternalScale, "replicas set to %d by someone else; paused, so left as they are", cur)
	default:
		e.cfg.Recorder.Eventf(ref(d), corev1.EventTypeNormal, ReasonExternalScale,
			"replicas set to %d by someone else (microscaling last set %d); microscaling manages this Deployment and decides again from %d on this tick: annotate %s=true to scale it by hand",
			cur, prev, cur, annotations.Paused)
	}
	return cur
}

// Scale writes a member's decision from cur to replicas for reason (or, in
// a dry run, tells it) and is the one place its outcome goes: a counter, an
// Event, the history and a log line. A failed write is told once while it
// fails the same way; the next tick decides afresh, never retrying a stale
// decision. It reports whether the replicas were written.
func (e *Executor) Scale(ctx context.Context, group string, d *snapshot.Object, m *Memory, cur, replicas int32, reason string) bool {
	logger := klog.FromContext(ctx).WithValues("group", group, "deployment", klog.KRef(d.Namespace, d.Name))
	dir := "up"
	if replicas < cur {
		dir = "down"
	}
	msg := fmt.Sprintf("%s %d -> %d: %s", d.Name, cur, replicas, reason)
	if e.cfg.DryRun {
		e.cfg.Metrics.ScaleOps.WithLabelValues(d.Namespace, d.Name, dir, "dry-run").Inc()
		e.Tell(d, m, corev1.EventTypeNormal, ReasonScaledDryRun, "dry run, not written: "+msg)
		e.cfg.History.Event(group, "dry run: "+msg, e.clock.Now())
		logger.V(2).Info("would scale", "from", cur, "to", replicas, "reason", reason)
		return false
	}
	err := e.cfg.Writer.Scale(ctx, d, replicas)
	if apierrors.IsNotFound(err) {
		logger.V(2).Info("deployment deleted while deciding")
		return false
	}
	if err != nil {
		e.cfg.Metrics.ScaleOps.WithLabelValues(d.Namespace, d.Name, dir, "error").Inc()
		e.Tell(d, m, corev1.EventTypeWarning, ReasonScaleFailed, fmt.Sprintf("%s: %v", msg, err))
		logger.V(2).Info("scale failed", "err", err)
		return false
	}
	now := e.clock.Now()
	m.mu.Lock()
	m.written, m.hasWritten, m.staleRV = replicas, true, d.Version
	m.last = fmt.Sprintf("%d -> %d at %s: %s", cur, replicas, now.UTC().Format(time.RFC3339), reason)
	m.mu.Unlock()
	e.Tell(d, m, corev1.EventTypeWarning, ReasonScaleFailed, "")
	e.cfg.Metrics.ScaleOps.WithLabelValues(d.Namespace, d.Name, dir, "ok").Inc()
	e.Event(d, corev1.EventTypeNormal, ReasonScaled, msg)
	e.cfg.History.Event(group, msg, now)
	logger.Info("scaled", "from", cur, "to", replicas, "reason", reason)
	return true
}
