package scaler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// Cluster is what the loop reads of the cluster; package informer
// implements it from shared informer caches.
type Cluster interface {
	// Snapshot returns every group's members as plain values, taken once
	// a tick; callers must not change it.
	Snapshot() snapshot.Snapshot
	// Object returns a Deployment, managed or not: the loop looks up one
	// that left the snapshot, to tell it is released.
	Object(namespace, name string) (snapshot.Object, bool)
}

// Config tunes the loop.
type Config struct {
	Interval time.Duration
	Workers  int
	// History, when set, keeps recent decisions for the dashboard.
	History *dashboard.History
	// RemainderMaxPriority is the highest pod priority a remainder may grow
	// at: a remainder takes room from everything at or below its priority
	// in the cluster, so it must run below them.
	RemainderMaxPriority int32
	// QueueHostsPerNamespace bounds the distinct queue hosts the members of
	// one namespace may name (0: no bound); the queues of hosts past it (in
	// sorted order) are not read, and their members are held.
	QueueHostsPerNamespace int
	// IdleFirst, when set, marks before each scale-down of a queue member
	// which of its pods hold the fewest messages, for the ReplicaSet
	// controller to delete first.
	IdleFirst Marker
}

// Marker marks d's pods cheapest to delete where their consumers hold the
// fewest messages of h (podcost.Marker); it reports the pods it wrote.
type Marker interface {
	Mark(ctx context.Context, d *snapshot.Object, h queue.Holdings) (int, error)
}

// Controller runs one decision per group per tick: it gathers the inputs,
// calls policy.DecideGroup and acts on the answer (a /scale write, an
// Event, the gauges and the dashboard's history).
type Controller struct {
	cfg     Config
	cluster Cluster
	queues  queue.Source
	exec    *execute.Executor
	metrics *metrics.Metrics
	clock   clock.Clock
	// lastTick is the unix nanoseconds at which the last tick finished.
	lastTick atomic.Int64

	// Owned by Run's goroutine (and the tick it runs):
	ticks      uint64    // ticks begun
	lastQueues *queueSet // the queues the last tick read
	// specs counts the changes of members' specs (parsed, cleared,
	// forgotten): the queue set is built again when it moves.
	specs  uint64
	groups map[string]*groupState // by group key; each touched by its group's decision only

	mu      sync.RWMutex // guards members (the map) and each memberState's listing fields
	members map[memberKey]*memberState
}

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

	// told is what the executor told and wrote of it (its own lock).
	told execute.Memory
}

// groupState is what the controller remembers of one group.
type groupState struct {
	decision policy.GroupState
	// roomErr is the last reason its room was unknown: told when it changes.
	roomErr string
	// budgetSaid: a budget conflict was told and not yet cleared.
	budgetSaid bool
}

type tick struct {
	at       time.Time
	readings policy.Readings
	// allowedHosts are, for each namespace over QueueHostsPerNamespace, the
	// queue hosts read; read-only.
	allowedHosts map[string]map[string]bool
	// members of each group, listed once for the whole tick; read-only.
	members map[string][]memberRef
	// snap is the tick's snapshot (each group's Room); read-only.
	snap snapshot.Snapshot
}

// memberRef is a listed member of a group with its state.
type memberRef struct {
	d  *snapshot.Member
	st *memberState
}

// New makes a controller.
func New(cfg Config, cluster Cluster, queues queue.Source, exec *execute.Executor, m *metrics.Metrics, clk clock.Clock) *Controller {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	return &Controller{
		cfg: cfg, cluster: cluster, queues: queues, exec: exec, metrics: m, clock: clk,
		members: map[memberKey]*memberState{}, groups: map[string]*groupState{},
	}
}

// Run ticks every Interval until ctx ends. It never writes on the way out:
// replicas stay as they are.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx)
	logger.Info("controller started", "interval", c.cfg.Interval, "workers", c.cfg.Workers, "dryRun", c.exec.DryRun())
	next := c.clock.Now()
	for ctx.Err() == nil {
		start := c.clock.Now()
		c.runTick(ctx, start)
		c.metrics.TickDuration.Observe(c.clock.Since(start).Seconds())
		c.metrics.TickLag.Observe(c.clock.Since(next).Seconds())
		next = next.Add(c.cfg.Interval)
		if now := c.clock.Now(); next.Before(now) {
			next = now // overran: start the next at once, do not pile up
		}
		select {
		case <-ctx.Done():
		case <-c.clock.After(next.Sub(c.clock.Now())):
		}
	}
	logger.Info("controller stopped; replicas left as they are")
}

// LastTick is when the last tick finished; zero before the first.
func (c *Controller) LastTick() time.Time {
	if n := c.lastTick.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// runTick reads every queue once, then decides every group on a bounded
// pool of workers; it returns when every group is decided.
func (c *Controller) runTick(ctx context.Context, now time.Time) {
	c.ticks++
	// Read the queues the last tick read while the members are listed; read
	// again only when this tick needs one that read does not cover.
	var early chan policy.Readings
	if prev := c.lastQueues; prev != nil && len(prev.list) > 0 {
		early = make(chan policy.Readings, 1)
		go func() { early <- c.queues.Read(ctx, prev.list) }()
	}
	snap := c.cluster.Snapshot()
	members := make(map[string][]memberRef, len(snap))
	for k, g := range snap {
		ms := make([]memberRef, len(g.Members))
		for i := range g.Members {
			d := &g.Members[i] // into the snapshot's own array: read only
			ms[i] = memberRef{d, c.state(ctx, d)}
		}
		members[k] = ms
		if c.groups[k] == nil {
			c.groups[k] = &groupState{}
		}
	}
	for k := range c.groups {
		if _, ok := members[k]; !ok {
			delete(c.groups, k)
		}
	}
	c.forgetUnseen()
	// The queues to read change only with a member's spec: built again
	// only then, not from every member every tick.
	q := c.lastQueues
	if q == nil || q.specs != c.specs {
		q = c.queueSet(members)
	}
	var readings policy.Readings
	if early != nil {
		readings = <-early
	}
	if early == nil || (q != c.lastQueues && !covers(c.lastQueues.refs, q.refs)) {
		readings = c.queues.Read(ctx, q.list)
	}
	c.lastQueues = q
	t := &tick{at: now, readings: readings, members: members, allowedHosts: q.allowed, snap: snap}
	keys := make([]string, 0, len(members))
	for k := range members {
		if annotations.ValidGroupKey(k) { // members of an invalid group are told of, never decided
			keys = append(keys, k)
		}
	}
	order := readyFirst(ctx, keys, members, readings)
	workqueue.ParallelizeUntil(ctx, c.cfg.Workers, len(keys), func(int) {
		k := <-order
		c.decide(ctx, k, c.groups[k], t)
	})
	c.lastTick.Store(c.clock.Now().UnixNano())
}

// readyFirst looks again at the groups whose readings are not complete
// after minReadyPoll, twice as long each time it finds none ready (most
// reads end together, when their one host answers), at most maxReadyPoll.
const minReadyPoll, maxReadyPoll = time.Millisecond, 16 * time.Millisecond

// readyFirst yields keys in the order their members' queue readings
// complete, so that a group whose hosts hang waits on its own readings and
// never holds a worker that a group with answers could use. Readings that
// cannot tell (no queue.Readiness) yield keys as they are. The channel
// holds every key, so the look-out never blocks and ends by itself.
func readyFirst(ctx context.Context, keys []string, members map[string][]memberRef, r policy.Readings) <-chan string {
	out := make(chan string, len(keys))
	rd, ok := r.(queue.Readiness)
	ready := func(k string) bool {
		for _, m := range members[k] {
			if m.st.spec == nil {
				continue
			}
			for _, q := range m.st.spec.Queues {
				if !rd.Ready(q) {
					return false
				}
			}
		}
		return true
	}
	if !ok {
		for _, k := range keys {
			out <- k
		}
		return out
	}
	pending := slices.Clone(keys)
	// look yields the pending groups now ready; it tells whether any was.
	look := func() bool {
		rest := pending[:0]
		for _, k := range pending {
			if ready(k) {
				out <- k
			} else {
				rest = append(rest, k)
			}
		}
		found := len(rest) < len(pending)
		pending = rest
		return found
	}
	look()
	if len(pending) == 0 {
		return out
	}
	go func() {
		wait := minReadyPoll
		t := time.NewTimer(wait)
		defer t.Stop()
		for len(pending) > 0 {
			select {
			case <-ctx.Done():
				for _, k := range pending {
					out <- k
				}
				return
			case <-t.C:
			}
			if look() {
				wait = minReadyPoll
			} else {
				wait = min(2*wait, maxReadyPoll)
			}
			t.Reset(wait)
		}
	}()
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

// member is one Deployment's part in a group decision.
type member struct {
	d    *snapshot.Member
	st   *memberState
	spec *annotations.Spec
	cur  int32
}

// scratch is the memory one group decision reuses: a tick decides every
// group, and allocating each one's slices afresh (10,000 members: megabytes
// a tick) would set how often the collector runs.
type scratch struct {
	ms     []member
	inputs []policy.MemberInput
	specs  []*annotations.Spec
	policy policy.Scratch
}

var scratches = sync.Pool{New: func() any { return new(scratch) }}

// decide gathers one group's inputs on tick t, decides, and acts.
func (c *Controller) decide(ctx context.Context, key string, gs *groupState, t *tick) {
	sc := scratches.Get().(*scratch)
	defer scratches.Put(sc)
	ms := c.gather(key, t, sc.ms[:0])
	sc.ms = ms
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
			in.Members[i].Queue, in.Members[i].QueueKnown = c.readQueues(m, t)
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
// they ask for now, and tells of replicas someone else set.
func (c *Controller) gather(key string, t *tick, ms []member) []member {
	refs := t.members[key]
	for _, ref := range refs {
		d, st := ref.d, ref.st
		c.mu.RLock()
		spec := st.spec
		c.mu.RUnlock()
		if spec == nil {
			continue // never had valid annotations: left alone
		}
		cur := d.Replicas
		if c.conflicting(d, st) {
			// Another autoscaler scales it: left alone, shown as held by it.
			st.mu.Lock()
			c.recordLocked(key, member{d: d, st: st, spec: spec, cur: cur}, t, dashboard.Status{Replicas: cur, Desired: cur, Held: execute.HeldConflict})
			st.mu.Unlock()
			c.exec.Decided(&d.Object, &st.told, execute.HeldConflict, spec, cur, cur)
			continue
		}
		cur = c.exec.Observe(&d.Object, &st.told, spec.Paused, cur)
		ms = append(ms, member{d: d, st: st, spec: spec, cur: cur})
	}
	return ms
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

// readQueues sums a member's queues from the tick's readings, sets its
// backlog gauge, and tells when its queues become unreadable or readable
// again. An unreadable queue holds the member.
func (c *Controller) readQueues(m member, t *tick) (policy.QueueReading, bool) {
	var sum policy.QueueReading
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
	c.exec.Turned(&m.d.Object, &m.st.told, "unreadable", err != nil, func() (string, string, string) {
		return corev1.EventTypeWarning, execute.ReasonQueueUnreadable, fmt.Sprintf("holding at %d replicas: %v", m.cur, err)
	}, func() (string, string, string) {
		return corev1.EventTypeNormal, execute.ReasonQueueReadable, fmt.Sprintf("queue read again: backlog %d", sum.Backlog)
	})
	st := m.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.gauges.Unreadable = err != nil
	if err != nil {
		return sum, false
	}
	st.gauges.Backlog, st.gauges.HasBacklog = sum.Backlog, true
	return sum, true
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

// record sets a member's gauges to the group's decision and adds it, with
// the member's status, to the dashboard's history.
func (c *Controller) record(group string, m member, d policy.MemberDecision, t *tick) {
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
