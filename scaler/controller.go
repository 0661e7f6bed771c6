package scaler

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
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
