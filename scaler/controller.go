package scaler

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	resourcehelper "k8s.io/component-helpers/resource"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
)

// Cluster is what the loop reads of the cluster; package informer
// implements it from shared informer caches.
type Cluster interface {
	// Groups returns each group's managed Deployments by group key, from
	// the cache; callers must not change them.
	Groups() map[string][]*appsv1.Deployment
	// Capacity reads nodes and pods; it is called at most once a tick.
	Capacity() (Capacity, error)
}

// Capacity gives each group its room.
type Capacity interface {
	Room(members []*appsv1.Deployment) (Room, error)
}

// Room is the allocation input for one group, from the cluster.
type Room struct {
	Free     []Resources
	Eligible [][]int // per member: indexes into Free
	Pending  []int32 // per member: Pending, unschedulable pods
}

// Queues reads every queue a tick needs, once per server.
type Queues interface {
	Read(ctx context.Context, refs []annotations.QueueRef) Readings
}

// Readings answers for one queue from one tick's reads.
type Readings interface {
	Reading(q annotations.QueueRef) (QueueReading, error)
}

// Config tunes the loop.
type Config struct {
	Interval time.Duration
	Workers  int
	DryRun   bool
	// History, when set, keeps recent decisions for the dashboard.
	History *History
}

// Controller runs one decision per group per tick. It is also the
// prometheus.Collector of the per-Deployment gauges, read from its state at
// scrape time: 10,000 members cost no stored series and no work per tick.
type Controller struct {
	cfg      Config
	cluster  Cluster
	queues   Queues
	writer   Writer
	recorder record.EventRecorder
	metrics  *Metrics
	clock    clock.Clock
	queue    workqueue.TypedInterface[work]
	ticks    uint64 // ticks begun; only Run's goroutine touches it
	// lastRefs are the queues the last tick read; only Run's goroutine touches it.
	lastRefs map[annotations.QueueRef]bool
	// groups is the state of each group; only Run's goroutine touches the map.
	groups map[string]*groupState

	mu      sync.RWMutex // guards members and each memberState's fields before rates
	members map[memberKey]*memberState
}

type memberKey struct{ namespace, name string }

// work is one group to decide on one tick.
type work struct {
	key  string
	tick *tick
}

// memberState is what the controller remembers of one Deployment.
type memberState struct {
	// mu guards the fields from rates on, which only the group's decision
	// and Collect use; those before rates are guarded by Controller.mu.
	mu sync.Mutex

	rv   string            // resourceVersion last looked at: unchanged, nothing to parse
	ann  map[string]string // the annotations last parsed (of the cached object: no copy)
	spec *annotations.Spec // the last good spec, never changed in place; nil while there was none
	pod  Resources         // what one pod of the template requests, at rv
	seen uint64            // the last tick that listed it

	rates      Rates
	queue      QueueState
	unreadable bool
	// written is the replica count this controller last wrote; a different
	// spec.replicas later means someone else scaled the Deployment.
	written    int32
	hasWritten bool
	// staleRV is the resourceVersion the last write replaced: while the cache
	// still shows it, the cache has not caught up with the write.
	staleRV string
	hist    *MemberHistory
	gauges  memberGauges
}

// memberGauges are the last values of a member's gauges; the has* flags tell
// which have been set.
type memberGauges struct {
	backlog, target                int64
	desired, current               int32
	hasBacklog, hasTarget, decided bool
}

// groupState is what the controller remembers of one group; only the worker
// deciding the group on a tick touches it.
type groupState struct {
	// quiet: the last decision changed nothing. While the members, the
	// room and what each queue rule wants stay as they were, the allocation
	// would give the same again, so it is skipped.
	quiet  bool
	inputs []allocInput // each decided member's, at that decision
	room   Capacity     // the capacity it packed into; nil when it needed none
}

// allocInput is what one member brought to an allocation: its state, its
// resourceVersion (its spec, replicas and pod template) and what its queue
// rule wanted.
type allocInput struct {
	st   *memberState
	rv   string
	want int32
}

// unchanged reports whether a quiet group's members bring what they brought
// to its last allocation, into the same room.
func (gs *groupState) unchanged(ms []member, room Capacity) bool {
	if !gs.quiet || len(ms) != len(gs.inputs) || room != gs.room {
		return false
	}
	for i := range ms {
		if in := gs.inputs[i]; ms[i].st != in.st || ms[i].d.ResourceVersion != in.rv || ms[i].alloc.Want != in.want {
			return false
		}
	}
	return true
}

// memberRef is a listed member of a group with its state.
type memberRef struct {
	d  *appsv1.Deployment
	st *memberState
}

type tick struct {
	at       time.Time
	readings Readings
	// members of each group, listed once for the whole tick; read-only.
	members map[string][]memberRef
	groups  map[string]*groupState
	pending sync.WaitGroup // groups of this tick not decided yet

	capOnce sync.Once
	cap     Capacity
	capErr  error
}

func (t *tick) capacity(c Cluster) (Capacity, error) {
	t.capOnce.Do(func() { t.cap, t.capErr = c.Capacity() })
	return t.cap, t.capErr
}

// New makes a controller.
func New(cfg Config, cluster Cluster, queues Queues, writer Writer, recorder record.EventRecorder, metrics *Metrics, clk clock.Clock) *Controller {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	return &Controller{
		cfg: cfg, cluster: cluster, queues: queues, writer: writer, recorder: recorder, metrics: metrics, clock: clk,
		queue:   workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[work]{Name: "microscaling"}),
		members: map[memberKey]*memberState{}, groups: map[string]*groupState{},
	}
}

// Run ticks every Interval until ctx ends, then waits for the workers. It
// never writes on the way out: replicas stay as they are.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx)
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	logger.Info("controller started", "interval", c.cfg.Interval, "workers", c.cfg.Workers, "dryRun", c.cfg.DryRun)
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
	c.queue.ShutDown()
	wg.Wait()
	logger.Info("controller stopped; replicas left as they are")
}

// runTick reads every queue once, then decides every group.
func (c *Controller) runTick(ctx context.Context, now time.Time) {
	c.ticks++
	// Read the queues the last tick read while the members are listed; read
	// again only when this tick needs one that read does not cover.
	var early chan Readings
	if prev := c.lastRefs; len(prev) > 0 {
		early = make(chan Readings, 1)
		go func() { early <- c.queues.Read(ctx, slices.Collect(maps.Keys(prev))) }()
	}
	groups := c.cluster.Groups()
	refs := map[annotations.QueueRef]bool{}
	members := make(map[string][]memberRef, len(groups))
	for k, ds := range groups {
		ms := make([]memberRef, len(ds))
		for i, d := range ds {
			st := c.state(ctx, d)
			ms[i] = memberRef{d, st}
			if st.spec != nil {
				for _, q := range st.spec.Queues {
					refs[q] = true
				}
			}
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
	var readings Readings
	if early != nil {
		readings = <-early
	}
	if early == nil || !covers(c.lastRefs, refs) {
		readings = c.queues.Read(ctx, slices.Collect(maps.Keys(refs)))
	}
	c.lastRefs = refs
	t := &tick{at: now, readings: readings, members: members, groups: c.groups}
	t.pending.Add(len(members))
	for k := range members {
		c.queue.Add(work{key: k, tick: t})
	}
	// Wait for this tick's groups so that ticks never overlap.
	done := make(chan struct{})
	go func() { t.pending.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func covers(read, need map[annotations.QueueRef]bool) bool {
	for q := range need {
		if !read[q] {
			return false
		}
	}
	return true
}

func (c *Controller) processNext(ctx context.Context) bool {
	w, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(w)
	defer w.tick.pending.Done()
	if ctx.Err() != nil {
		return true
	}
	c.sync(ctx, w.key, w.tick)
	return true
}

// state returns the remembered state of d, marked seen on this tick,
// parsing its annotations again when they changed. A bad value is reported
// once per change with a Warning Event per key; the last good spec stays in
// force.
func (c *Controller) state(ctx context.Context, d *appsv1.Deployment) *memberState {
	key := memberKey{d.Namespace, d.Name}
	c.mu.Lock()
	st, ok := c.members[key]
	if !ok {
		st = &memberState{}
		c.members[key] = st
	}
	st.seen = c.ticks
	if ok && st.rv == d.ResourceVersion {
		c.mu.Unlock()
		return st
	}
	changed := !ok || !sameManaged(st.ann, d.Annotations)
	st.rv, st.ann, st.pod = d.ResourceVersion, d.Annotations, PodResources(&d.Spec.Template.Spec)
	c.mu.Unlock()
	if !changed {
		return st
	}
	spec, err := annotations.Parse(d.Name, d.Annotations)
	if err != nil {
		kept := "the Deployment is left alone"
		if st.spec != nil {
			kept = "the last good settings stay in force"
		}
		for _, fe := range annotations.FieldErrors(err) {
			key := fe.Key // a label value: only the contract's keys, never a tenant's typo
			if !slices.Contains(annotations.Keys, key) {
				key = "unknown"
			}
			c.metrics.AnnotationErrors.WithLabelValues(d.Namespace, d.Name, key).Inc()
			c.recorder.Eventf(d, corev1.EventTypeWarning, "InvalidAnnotation", "%s; %s", fe.Error(), kept)
		}
		klog.FromContext(ctx).Info("invalid annotations", "deployment", klog.KObj(d), "err", err)
		return st
	}
	c.mu.Lock()
	st.spec = &spec
	c.mu.Unlock()
	return st
}

// sameManaged reports whether a and b hold the same microscaling.com/* annotations.
func sameManaged(a, b map[string]string) bool {
	n := 0
	for k, v := range a {
		if strings.HasPrefix(k, annotations.Prefix) {
			if w, ok := b[k]; !ok || w != v {
				return false
			}
			n++
		}
	}
	for k := range b {
		if strings.HasPrefix(k, annotations.Prefix) {
			n--
		}
	}
	return n == 0
}

// forgetUnseen drops the state of members the current tick did not list.
func (c *Controller) forgetUnseen() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, st := range c.members {
		if st.seen != c.ticks {
			delete(c.members, k)
			c.metrics.forget(k.namespace, k.name)
			c.cfg.History.forget(k.namespace, k.name)
		}
	}
}

// member is one Deployment's part in a group decision.
type member struct {
	d      *appsv1.Deployment
	st     *memberState
	spec   *annotations.Spec
	pod    Resources
	cur    int32
	alloc  Member
	reason string // the queue rule's
}

// sync decides one group on tick t and writes what changed.
func (c *Controller) sync(ctx context.Context, key string, t *tick) {
	refs, gs := t.members[key], t.groups[key]
	ms := make([]member, 0, len(refs))
	budget := int32(0)
	for _, ref := range refs {
		d, st := ref.d, ref.st
		c.mu.RLock()
		spec, pod := st.spec, st.pod
		c.mu.RUnlock()
		if spec == nil {
			continue // never had valid annotations: left alone
		}
		cur := int32(1)
		if d.Spec.Replicas != nil {
			cur = *d.Spec.Replicas
		}
		st.mu.Lock()
		if st.hasWritten && d.ResourceVersion == st.staleRV {
			cur = st.written // the cache lags behind our own write
		}
		external, prev := st.hasWritten && st.written != cur, st.written
		if external {
			st.written = cur // report each outside change once
		}
		st.mu.Unlock()
		if external {
			c.noticeExternalScale(d, spec, prev, cur)
		}
		m := member{d: d, st: st, spec: spec, pod: pod, cur: cur}
		m.alloc = Member{Name: d.Name, Priority: spec.Priority, Remainder: spec.Rule == annotations.RuleRemainder,
			Current: cur, Min: spec.MinReplicas, Max: spec.MaxReplicas, Want: cur}
		if spec.Paused {
			// A paused member keeps what it has and is never written.
			m.alloc.Min, m.alloc.Max, m.alloc.Want = cur, cur, cur
		}
		if spec.GroupMaxReplicas > 0 {
			if budget > 0 && budget != spec.GroupMaxReplicas {
				c.recorder.Eventf(d, corev1.EventTypeWarning, "GroupBudgetConflict",
					"%s=%d disagrees with another member of group %s (%d); using the smaller", annotations.GroupMaxReplicas, spec.GroupMaxReplicas, key, budget)
				budget = min(budget, spec.GroupMaxReplicas)
			} else {
				budget = spec.GroupMaxReplicas
			}
		}
		ms = append(ms, m)
	}
	if len(ms) == 0 {
		return
	}
	for i := range ms {
		if m := &ms[i]; m.spec.Rule == annotations.RuleQueue && !m.spec.Paused {
			c.decideQueue(m, t)
		}
	}
	needed := needsRoom(ms)
	if gs.quiet {
		var room Capacity
		var err error
		if needed {
			room, err = t.capacity(c.cluster)
		}
		if err == nil && gs.unchanged(ms, room) {
			// The allocation would give the same decisions, which changed nothing.
			for i := range ms {
				c.record(key, &ms[i], ms[i].cur, t)
			}
			return
		}
	}
	gs.quiet = false
	g := Group{Budget: budget, Members: make([]Member, len(ms))}
	for i, m := range ms {
		g.Members[i] = m.alloc
	}
	var room Capacity
	if needed {
		room = c.fillRoom(ctx, &g, ms, t)
	} else {
		// A lone queue member is never held back by node room: no nodes to
		// pack, and its pods beyond them may ask a cluster autoscaler for more.
		g.CapacityKnown = true
	}
	decisions := Allocate(g)
	// Give room back before taking it: decreases first.
	order := make([]int, len(ms))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return int(decisions[a].Replicas-ms[a].cur) - int(decisions[b].Replicas-ms[b].cur)
	})
	for _, i := range order {
		m, d := &ms[i], decisions[i]
		c.record(key, m, d.Replicas, t)
		if m.spec.Paused || d.Replicas == m.cur {
			continue
		}
		c.write(ctx, m, d, key)
	}
	if needed && room == nil {
		return // capacity unknown: remainders held, decide in full again
	}
	for i := range ms {
		if decisions[i].Replicas != ms[i].cur {
			return
		}
	}
	gs.quiet, gs.room, gs.inputs = true, room, gs.inputs[:0]
	for _, m := range ms {
		gs.inputs = append(gs.inputs, allocInput{st: m.st, rv: m.d.ResourceVersion, want: m.alloc.Want})
	}
}

// record sets a member's gauges to the group's decision and adds it to the
// dashboard's history.
func (c *Controller) record(group string, m *member, desired int32, t *tick) {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	g := &m.st.gauges
	g.desired, g.current, g.decided = desired, m.cur, true
	if m.st.hist == nil {
		m.st.hist = c.cfg.History.member(m.d.Namespace, m.d.Name)
	}
	c.cfg.History.record(m.st.hist, group, string(m.spec.Rule), m.spec.Priority, Point{
		T: t.at.UnixMilli(), Backlog: float64(g.backlog), Target: float64(m.spec.TargetQueueLength), Desired: desired, Current: m.cur})
}

// noticeExternalScale tells that someone else set the replicas of a managed
// Deployment from prev, which microscaling wrote, to cur; the decision then
// starts from their count and corrects it if the rules say otherwise.
func (c *Controller) noticeExternalScale(d *appsv1.Deployment, spec *annotations.Spec, prev, cur int32) {
	if spec.Paused {
		c.recorder.Eventf(d, corev1.EventTypeNormal, "ExternalScale", "replicas set to %d by someone else; paused, so left as they are", cur)
		return
	}
	c.recorder.Eventf(d, corev1.EventTypeNormal, "ExternalScale",
		"replicas set to %d by someone else (microscaling last set %d); microscaling manages this Deployment and decides again from %d on this tick: annotate %s=true to scale it by hand",
		cur, prev, cur, annotations.Paused)
}

func needsRoom(ms []member) bool {
	return len(ms) > 1 || ms[0].spec.Rule == annotations.RuleRemainder
}

func queuePolicy(s *annotations.Spec) QueuePolicy {
	return QueuePolicy{Target: s.TargetQueueLength, Wait: s.TargetWait, Min: s.MinReplicas, Max: s.MaxReplicas, MaxDelta: s.MaxDelta, ScaleDownDelay: s.ScaleDownDelay}
}

// readQueues sums a member's queues from the tick's readings.
func readQueues(spec *annotations.Spec, t *tick) (QueueReading, error) {
	var sum QueueReading
	for _, q := range spec.Queues {
		r, err := t.readings.Reading(q)
		if err != nil {
			return QueueReading{}, err
		}
		sum.Backlog += r.Backlog
		sum.Waiting += r.Waiting
		sum.Arrived += r.Arrived
		sum.Consumers = max(sum.Consumers, r.Consumers)
	}
	return sum, nil
}

// decideQueue reads the member's queues from the tick and applies the queue rule.
func (c *Controller) decideQueue(m *member, t *tick) {
	sum, readErr := readQueues(m.spec, t)
	st := m.st
	st.mu.Lock()
	defer st.mu.Unlock()
	in := QueueInput{Now: t.at, Current: m.cur}
	if readErr != nil {
		if !st.unreadable {
			c.recorder.Eventf(m.d, corev1.EventTypeWarning, "QueueUnreadable", "holding at %d replicas: %v", m.cur, readErr)
		}
		st.unreadable = true
	} else {
		if st.unreadable {
			c.recorder.Eventf(m.d, corev1.EventTypeNormal, "QueueReadable", "queue read again: backlog %d", sum.Backlog)
		}
		st.unreadable = false
		// A replica consumes once it is Ready and connected to the queue. With
		// no connection seen at all (consumers that nsqd does not list, or
		// none alive), Ready replicas count: they are not on the way.
		consuming := m.d.Status.ReadyReplicas
		if sum.Consumers > 0 {
			consuming = int32(min(int64(consuming), sum.Consumers))
		}
		st.rates.Observe(QueueSample{Time: t.at, Backlog: sum.Backlog, Waiting: sum.Waiting, Arrived: sum.Arrived, Consuming: consuming})
		in.BacklogKnown, in.Backlog, in.Waiting, in.Consuming, in.Rates = true, sum.Backlog, sum.Waiting, consuming, st.rates
		st.gauges.backlog, st.gauges.hasBacklog = sum.Backlog, true
	}
	st.gauges.target, st.gauges.hasTarget = m.spec.TargetQueueLength, m.spec.TargetQueueLength > 0
	d := DecideQueue(queuePolicy(m.spec), in, &st.queue)
	m.alloc.Want = d.Replicas
	m.reason = d.Reason
}

// fillRoom puts the cluster's room into g and returns the capacity it came
// from; without it (nil), remainders hold.
func (c *Controller) fillRoom(ctx context.Context, g *Group, ms []member, t *tick) Capacity {
	capacity, err := t.capacity(c.cluster)
	if err == nil {
		var room Room
		ds := make([]*appsv1.Deployment, len(ms))
		for i, m := range ms {
			ds[i] = m.d
		}
		if room, err = capacity.Room(ds); err == nil {
			g.Free, g.CapacityKnown = room.Free, true
			for i := range g.Members {
				g.Members[i].Nodes = room.Eligible[i]
				if g.Members[i].Nodes == nil {
					g.Members[i].Nodes = []int{} // no node fits: not "every node"
				}
				g.Members[i].Pending = room.Pending[i]
				g.Members[i].Pod = ms[i].pod
			}
			return capacity
		}
	}
	klog.FromContext(ctx).Info("capacity unknown: remainders hold", "err", err)
	return nil
}

func (c *Controller) write(ctx context.Context, m *member, d Decision, group string) {
	logger := klog.FromContext(ctx).WithValues("group", group)
	dir := "up"
	if d.Replicas < m.cur {
		dir = "down"
	}
	why := m.reason
	if d.Reason != "" {
		why = strings.TrimPrefix(why+"; "+d.Reason, "; ")
	}
	if m.alloc.Remainder && why == "" {
		why = "spare room in the group"
	}
	msg := fmt.Sprintf("%s %d -> %d: %s", m.d.Name, m.cur, d.Replicas, why)
	if c.cfg.DryRun {
		c.recorder.Event(m.d, corev1.EventTypeNormal, "ScaledDryRun", "dry run, not written: "+msg)
		c.cfg.History.event(group, "dry run: "+msg, c.clock.Now())
		logger.Info("would scale", "deployment", klog.KObj(m.d), "from", m.cur, "to", d.Replicas, "reason", why)
		c.metrics.ScaleOps.WithLabelValues(m.d.Namespace, m.d.Name, dir, "dry-run").Inc()
		return
	}
	if err := c.writer.Scale(ctx, m.d, d.Replicas); err != nil {
		if apierrors.IsNotFound(err) {
			logger.V(2).Info("deployment deleted while deciding", "deployment", klog.KObj(m.d))
			return
		}
		c.metrics.ScaleOps.WithLabelValues(m.d.Namespace, m.d.Name, dir, "error").Inc()
		c.recorder.Eventf(m.d, corev1.EventTypeWarning, "ScaleFailed", "%s: %v", msg, err)
		logger.Error(err, "scaling", "deployment", klog.KObj(m.d))
		return
	}
	m.st.mu.Lock()
	m.st.written, m.st.hasWritten, m.st.staleRV = d.Replicas, true, m.d.ResourceVersion
	m.st.mu.Unlock()
	c.metrics.ScaleOps.WithLabelValues(m.d.Namespace, m.d.Name, dir, "ok").Inc()
	c.recorder.Event(m.d, corev1.EventTypeNormal, "Scaled", msg)
	c.cfg.History.event(group, msg, c.clock.Now())
	logger.Info("scaled", "deployment", klog.KObj(m.d), "from", m.cur, "to", d.Replicas, "reason", why)
}

// PodResources is what one pod of spec requests as the scheduler counts it:
// regular and sidecar containers, the largest init container, pod overhead
// and pod-level resources.
func PodResources(spec *corev1.PodSpec) Resources {
	req := resourcehelper.PodRequests(&corev1.Pod{Spec: *spec}, resourcehelper.PodResourcesOptions{})
	return Resources{Pods: 1, MilliCPU: req.Cpu().MilliValue(), Memory: req.Memory().Value()}
}
