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
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microscaling/microscaling/annotations"
)

// Cluster is what the loop reads of the cluster; package informer
// implements it from shared informer caches.
type Cluster interface {
	GroupKeys() []string
	// Members returns a group's managed Deployments from the cache; callers
	// must not change them.
	Members(key string) ([]*appsv1.Deployment, error)
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

// Controller runs one decision per group per tick.
type Controller struct {
	cfg      Config
	cluster  Cluster
	queues   Queues
	writer   Writer
	recorder record.EventRecorder
	metrics  *Metrics
	clock    clock.Clock
	queue    workqueue.TypedInterface[work]

	mu      sync.RWMutex // guards members and each memberState's fields but those under its own mu
	members map[string]*memberState
}

// work is one group to decide on one tick.
type work struct {
	key  string
	tick *tick
}

// memberState is what the controller remembers of one Deployment.
type memberState struct {
	// mu guards rates, queue, unreadable, backlog and gauges, which only the
	// group's decision uses; the rest is guarded by Controller.mu.
	mu sync.Mutex

	rv         string // resourceVersion last looked at: unchanged, nothing to parse
	raw        string // the microscaling.com/* annotations last parsed
	spec       annotations.Spec
	good       bool // spec is a valid spec (the last good one)
	rates      Rates
	queue      QueueState
	unreadable bool
	backlog    int64
	// written is the replica count this controller last wrote; a different
	// spec.replicas later means someone else scaled the Deployment.
	written    int32
	hasWritten bool
	// staleRV is the resourceVersion the last write replaced: while the cache
	// still shows it, the cache has not caught up with the write.
	staleRV string
	gauges  *memberGauges // looked up once: a label lookup per tick adds up
}

type memberGauges struct{ backlog, target, desired, current prometheus.Gauge }

// memberGauges returns st's gauges; callers hold st.mu.
func (c *Controller) memberGauges(st *memberState, d *appsv1.Deployment) *memberGauges {
	if st.gauges == nil {
		ns, name := d.Namespace, d.Name
		st.gauges = &memberGauges{
			backlog: c.metrics.Backlog.WithLabelValues(ns, name), target: c.metrics.Target.WithLabelValues(ns, name),
			desired: c.metrics.Desired.WithLabelValues(ns, name), current: c.metrics.Current.WithLabelValues(ns, name)}
	}
	return st.gauges
}

type tick struct {
	at       time.Time
	readings Readings
	// members of each group, listed once for the whole tick; read-only.
	members map[string][]*appsv1.Deployment
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
		members: map[string]*memberState{},
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
	keys := c.cluster.GroupKeys()
	refs := map[annotations.QueueRef]bool{}
	seen := map[string]bool{}
	members := make(map[string][]*appsv1.Deployment, len(keys))
	for _, k := range keys {
		ms, err := c.cluster.Members(k)
		if err != nil {
			utilruntime.HandleErrorWithContext(ctx, err, "listing group members", "group", k)
			continue
		}
		members[k] = ms
		for _, d := range ms {
			st := c.state(ctx, d)
			seen[d.Namespace+"/"+d.Name] = true
			if st.good {
				for _, q := range st.spec.Queues {
					refs[q] = true
				}
			}
		}
	}
	c.forgetExcept(seen)
	readings := c.queues.Read(ctx, slices.Collect(maps.Keys(refs)))
	t := &tick{at: now, readings: readings, members: members}
	t.pending.Add(len(keys))
	for _, k := range keys {
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

// state returns the remembered state of d, parsing its annotations again
// when they changed. A bad value is reported once per change with a Warning
// Event per key; the last good spec stays in force.
func (c *Controller) state(ctx context.Context, d *appsv1.Deployment) *memberState {
	key := d.Namespace + "/" + d.Name
	c.mu.RLock()
	st, ok := c.members[key]
	if ok && st.rv == d.ResourceVersion {
		c.mu.RUnlock()
		return st
	}
	c.mu.RUnlock()
	raw := rawAnnotations(d.Annotations)
	c.mu.Lock()
	if !ok {
		st = &memberState{}
		c.members[key] = st
	}
	changed := st.raw != raw || !ok
	st.raw, st.rv = raw, d.ResourceVersion
	c.mu.Unlock()
	if !changed {
		return st
	}
	spec, err := annotations.Parse(d.Name, d.Annotations)
	if err != nil {
		kept := "the Deployment is left alone"
		if st.good {
			kept = "the last good settings stay in force"
		}
		for _, fe := range annotations.FieldErrors(err) {
			c.metrics.AnnotationErrors.WithLabelValues(d.Namespace, d.Name, fe.Key).Inc()
			c.recorder.Eventf(d, corev1.EventTypeWarning, "InvalidAnnotation", "%s; %s", fe.Error(), kept)
		}
		klog.FromContext(ctx).Info("invalid annotations", "deployment", klog.KObj(d), "err", err)
		return st
	}
	c.mu.Lock()
	st.spec, st.good = spec, true
	c.mu.Unlock()
	return st
}

func rawAnnotations(ann map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		if strings.HasPrefix(k, annotations.Prefix) {
			b.WriteString(k + "=" + ann[k] + "\n")
		}
	}
	return b.String()
}

func (c *Controller) forgetExcept(seen map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.members {
		if !seen[k] {
			delete(c.members, k)
			ns, name, _ := strings.Cut(k, "/")
			c.metrics.forget(ns, name)
			c.cfg.History.forget(ns, name)
		}
	}
}

// member is one Deployment's part in a group decision.
type member struct {
	d      *appsv1.Deployment
	st     *memberState
	spec   annotations.Spec
	cur    int32
	alloc  Member
	reason string // the queue rule's
}

// sync decides one group on tick t and writes what changed.
func (c *Controller) sync(ctx context.Context, key string, t *tick) {
	logger := klog.FromContext(ctx).WithValues("group", key)
	ds := t.members[key]
	var ms []*member
	budget := int32(0)
	for _, d := range ds {
		st := c.state(ctx, d)
		c.mu.RLock()
		good, spec := st.good, st.spec
		c.mu.RUnlock()
		if !good {
			continue // never had valid annotations: left alone
		}
		cur := int32(1)
		if d.Spec.Replicas != nil {
			cur = *d.Spec.Replicas
		}
		c.mu.Lock()
		if st.hasWritten && d.ResourceVersion == st.staleRV {
			cur = st.written // the cache lags behind our own write
		}
		c.mu.Unlock()
		m := &member{d: d, st: st, spec: spec, cur: cur}
		c.noticeExternalScale(d, st, spec, cur)
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
	for _, m := range ms {
		if m.spec.Rule == annotations.RuleQueue && !m.spec.Paused {
			c.decideQueue(m, t)
		}
	}
	g := Group{Budget: budget, Members: make([]Member, len(ms))}
	for i, m := range ms {
		g.Members[i] = m.alloc
	}
	if needsRoom(ms) {
		c.fillRoom(ctx, &g, ms, t)
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
		m, d := ms[i], decisions[i]
		m.st.mu.Lock()
		backlog := m.st.backlog
		g := c.memberGauges(m.st, m.d)
		m.st.mu.Unlock()
		g.desired.Set(float64(d.Replicas))
		g.current.Set(float64(m.cur))
		c.cfg.History.record(key, m.d.Namespace, m.d.Name, string(m.spec.Rule), m.spec.Priority, Point{
			T: t.at.UnixMilli(), Backlog: float64(backlog), Target: float64(m.spec.TargetQueueLength), Desired: d.Replicas, Current: m.cur})
		if m.spec.Paused || d.Replicas == m.cur {
			continue
		}
		c.write(ctx, logger, m, d, key)
	}
}

// noticeExternalScale tells, once per change, that someone else set the
// replicas of a managed Deployment; the decision then starts from their count
// and corrects it if the rules say otherwise.
func (c *Controller) noticeExternalScale(d *appsv1.Deployment, st *memberState, spec annotations.Spec, cur int32) {
	c.mu.Lock()
	external := st.hasWritten && st.written != cur
	prev := st.written
	if external {
		st.written = cur // report each outside change once
	}
	c.mu.Unlock()
	if !external {
		return
	}
	if spec.Paused {
		c.recorder.Eventf(d, corev1.EventTypeNormal, "ExternalScale", "replicas set to %d by someone else; paused, so left as they are", cur)
		return
	}
	c.recorder.Eventf(d, corev1.EventTypeNormal, "ExternalScale",
		"replicas set to %d by someone else (microscaling last set %d); microscaling manages this Deployment and decides again from %d on this tick: annotate %s=true to scale it by hand",
		cur, prev, cur, annotations.Paused)
}

func needsRoom(ms []*member) bool {
	return len(ms) > 1 || ms[0].spec.Rule == annotations.RuleRemainder
}

// decideQueue reads the member's queues from the tick and applies the queue rule.
func (c *Controller) decideQueue(m *member, t *tick) {
	var sum QueueReading
	var readErr error
	for _, q := range m.spec.Queues {
		r, err := t.readings.Reading(q)
		if err != nil {
			readErr = err
			break
		}
		sum.Backlog += r.Backlog
		sum.Arrived += r.Arrived
	}
	st := m.st
	st.mu.Lock()
	defer st.mu.Unlock()
	in := QueueInput{Now: t.at, Current: m.cur, Ready: m.d.Status.ReadyReplicas}
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
		st.rates.Observe(QueueSample{Time: t.at, Backlog: sum.Backlog, Arrived: sum.Arrived, Ready: m.d.Status.ReadyReplicas})
		in.BacklogKnown, in.Backlog, in.Rates = true, sum.Backlog, st.rates
		st.backlog = sum.Backlog
		c.memberGauges(st, m.d).backlog.Set(float64(sum.Backlog))
	}
	c.memberGauges(st, m.d).target.Set(float64(m.spec.TargetQueueLength))
	d := DecideQueue(QueuePolicy{Target: m.spec.TargetQueueLength, Min: m.spec.MinReplicas, Max: m.spec.MaxReplicas,
		MaxDelta: m.spec.MaxDelta, ScaleDownDelay: m.spec.ScaleDownDelay}, in, &st.queue)
	m.alloc.Want = d.Replicas
	m.reason = d.Reason
}

// fillRoom puts the cluster's room into g; without it, remainders hold.
func (c *Controller) fillRoom(ctx context.Context, g *Group, ms []*member, t *tick) {
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
				g.Members[i].Pod = PodResources(&ms[i].d.Spec.Template.Spec)
			}
			return
		}
	}
	klog.FromContext(ctx).Info("capacity unknown: remainders hold", "err", err)
}

func (c *Controller) write(ctx context.Context, logger klog.Logger, m *member, d Decision, group string) {
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
	c.mu.Lock()
	m.st.written, m.st.hasWritten, m.st.staleRV = d.Replicas, true, m.d.ResourceVersion
	c.mu.Unlock()
	c.metrics.ScaleOps.WithLabelValues(m.d.Namespace, m.d.Name, dir, "ok").Inc()
	c.recorder.Event(m.d, corev1.EventTypeNormal, "Scaled", msg)
	c.cfg.History.event(group, msg, c.clock.Now())
	logger.Info("scaled", "deployment", klog.KObj(m.d), "from", m.cur, "to", d.Replicas, "reason", why)
}

// PodResources sums the requests of the containers of a pod template.
func PodResources(spec *corev1.PodSpec) Resources {
	r := Resources{Pods: 1}
	for _, ct := range spec.Containers {
		r.MilliCPU += ct.Resources.Requests.Cpu().MilliValue()
		r.Memory += ct.Resources.Requests.Memory().Value()
	}
	return r
}
