package scaler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// fakeCluster hands out its Deployments as the informer's snapshot does:
// grouped, sorted by name, parsed again only when their annotations
// changed, with their autoscalers and (remainders') pod priority.
type fakeCluster struct {
	groups map[string][]*appsv1.Deployment
	// unmanaged are Deployments the cache holds that no group lists.
	unmanaged []*appsv1.Deployment
	// room is each group's room; nil: unknown.
	room func(ds []*appsv1.Deployment) (policy.Room, error)
	// priority is a remainder's pod priority; nil: -10 for PriorityClass
	// low, else 0.
	priority func(d *appsv1.Deployment) (int32, string, error)

	mu     sync.Mutex          // guards hpas, parsed and parses
	hpas   map[string][]string // namespace/name -> HPAs that target it
	parsed map[memberKey]parse
	parses uint64
}

type parse struct {
	ann  map[string]string // a copy: the tests change annotations in place
	spec *annotations.Spec
	err  error
	n    uint64
}

func (f *fakeCluster) Snapshot() snapshot.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := snapshot.Snapshot{}
	for k, ds := range f.groups {
		ds = slices.SortedFunc(slices.Values(ds), func(a, b *appsv1.Deployment) int { return strings.Compare(a.Name, b.Name) })
		g := snapshot.Group{Room: func() (policy.Room, error) {
			if f.room == nil {
				return policy.Room{}, errors.New("no nodes in this test")
			}
			return f.room(ds)
		}}
		for _, d := range ds {
			g.Members = append(g.Members, f.member(d))
		}
		out[k] = g
	}
	return out
}

// member is d in a snapshot; f.mu is held.
func (f *fakeCluster) member(d *appsv1.Deployment) snapshot.Member {
	m := snapshot.Member{Object: fakeObject(d), Autoscalers: f.hpas[d.Namespace+"/"+d.Name]}
	k := memberKey{d.Namespace, d.Name}
	p, ok := f.parsed[k]
	if !ok || !maps.Equal(p.ann, d.Annotations) {
		spec, err := annotations.Parse(d.Name, d.Annotations)
		spec.QualifySecret(d.Namespace)
		f.parses++
		p = parse{ann: maps.Clone(d.Annotations), err: err, n: f.parses}
		if err == nil {
			p.spec = &spec
		}
		if f.parsed == nil {
			f.parsed = map[memberKey]parse{}
		}
		f.parsed[k] = p
	}
	m.Spec, m.Problem, m.Parsed = p.spec, p.err, p.n
	if m.Spec != nil && m.Spec.Rule == annotations.RuleRemainder {
		switch {
		case f.priority != nil:
			m.Priority, m.PriorityClass, m.PriorityErr = f.priority(d)
		case d.Spec.Template.Spec.PriorityClassName == "low":
			m.Priority, m.PriorityClass = -10, "low"
		}
	}
	return m
}

func fakeObject(d *appsv1.Deployment) snapshot.Object {
	return snapshot.Object{Namespace: d.Namespace, Name: d.Name, UID: d.UID, Version: d.ResourceVersion, Generation: d.Generation,
		Replicas: annotations.Replicas(d.Spec.Replicas), Ready: d.Status.ReadyReplicas, Annotations: d.Annotations}
}

// find returns a Deployment of f, managed or not.
func (f *fakeCluster) find(namespace, name string) (*appsv1.Deployment, bool) {
	for _, ds := range f.groups {
		for _, d := range ds {
			if d.Namespace == namespace && d.Name == name {
				return d, true
			}
		}
	}
	for _, d := range f.unmanaged {
		if d.Namespace == namespace && d.Name == name {
			return d, true
		}
	}
	return nil, false
}

func (f *fakeCluster) Object(namespace, name string) (snapshot.Object, bool) {
	d, ok := f.find(namespace, name)
	if !ok {
		return snapshot.Object{}, false
	}
	return fakeObject(d), true
}

type fakeQueues struct {
	mu      sync.Mutex // guards backlog, arrived and err
	backlog int64
	arrived int64
	err     error
}

func (f *fakeQueues) Read(context.Context, []queue.Ref) policy.Readings { return f }
func (f *fakeQueues) Reading(annotations.QueueRef) (policy.QueueReading, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Every message waits undelivered, and every Ready replica is connected.
	return policy.QueueReading{Backlog: f.backlog, Waiting: f.backlog, Arrived: f.arrived, Consumers: 1000}, f.err
}

// fakeWriter records the writes, and makes them in cluster's Deployments
// at once.
type fakeWriter struct {
	cluster *fakeCluster
	mu      sync.Mutex // guards writes
	writes  []string
}

func (f *fakeWriter) Scale(_ context.Context, o *snapshot.Object, n int32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, fmt.Sprintf("%s=%d", o.Name, n))
	d, ok := f.cluster.find(o.Namespace, o.Name)
	if !ok {
		return fmt.Errorf("%s/%s not found", o.Namespace, o.Name)
	}
	*d.Spec.Replicas = n // the cache catches up at once in this test, pods Ready
	d.Status.ReadyReplicas = n
	d.ResourceVersion += "+"
	return nil
}

func (f *fakeWriter) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.writes
	f.writes = nil
	return w
}

// testExec is an executor writing through w and recording on rec.
func testExec(w execute.Writer, rec record.EventRecorder, clk *clocktesting.FakeClock, dryRun bool) *execute.Executor {
	return execute.New(execute.Config{Writer: w, Recorder: rec, Metrics: metrics.NewMetrics(prometheus.NewRegistry()), DryRun: dryRun}, clk)
}

// consumerFixture is a controller deciding one queue consumer (min 1, max 5,
// target 10, no scale-down delay) at 1 replica, on a fake clock.
type consumerFixture struct {
	consumer *appsv1.Deployment
	cluster  *fakeCluster
	queues   *fakeQueues
	writer   *fakeWriter
	rec      *record.FakeRecorder
	clk      *clocktesting.FakeClock
	c        *Controller
	ctx      context.Context
}

func newConsumerFixture(t *testing.T) consumerFixture {
	replicas := int32(1)
	f := consumerFixture{
		consumer: &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "consumer", Namespace: "ns", ResourceVersion: "1",
			Annotations: map[string]string{annotations.Queue: "nsq://h:1/t/c", annotations.TargetQueueLength: "10",
				annotations.MinReplicas: "1", annotations.MaxReplicas: "5", annotations.ScaleDownDelay: "0s"}},
			Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ReadyReplicas: replicas}},
		queues: &fakeQueues{}, writer: &fakeWriter{}, rec: record.NewFakeRecorder(100),
		clk: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}
	f.cluster = &fakeCluster{groups: map[string][]*appsv1.Deployment{"ns/consumer": {f.consumer}}}
	f.writer.cluster = f.cluster
	f.c = New(Config{Interval: time.Second, Workers: 2}, f.cluster, f.queues, testExec(f.writer, f.rec, f.clk, false), metrics.NewMetrics(prometheus.NewRegistry()), f.clk)
	f.ctx = t.Context()
	return f
}

func TestControllerTicks(t *testing.T) {
	f := newConsumerFixture(t)
	cluster, queues, writer, rec, clk, c, ctx := f.cluster, f.queues, f.writer, f.rec, f.clk, f.c, f.ctx
	tick := func() []string {
		clk.Step(time.Second)
		c.runTick(ctx, clk.Now())
		return writer.take()
	}
	steps := []struct {
		name    string
		backlog int64
		err     error
		want    string // the writes of the tick, joined
		event   string // an event the tick must record
	}{
		{name: "steady state writes nothing", backlog: 5},
		{name: "backlog above target scales up", backlog: 30, want: "consumer=3", event: "consumer 1 -> 3: backlog 30 > target 10"},
		{name: "one failed read holds, not told", err: errors.New("nsqd down")},
		{name: "read again: nothing to tell", backlog: 30},
		{name: "one failed read again: not told", err: errors.New("nsqd down")},
		{name: "the second in a row is told, held", err: errors.New("nsqd down"), event: "QueueUnreadable"},
		{name: "still unreadable: no second warning, no write", err: errors.New("nsqd down")},
		{name: "readable and empty again: down to min", backlog: 0, want: "consumer=1", event: "QueueReadable"},
		{name: "steady again", backlog: 0},
	}
	for _, st := range steps {
		queues.mu.Lock()
		queues.backlog, queues.err = st.backlog, st.err
		queues.mu.Unlock()
		got := strings.Join(tick(), ",")
		if got != st.want {
			t.Errorf("%s: writes %q, want %q", st.name, got, st.want)
		}
		var evs []string
		for len(rec.Events) > 0 {
			evs = append(evs, <-rec.Events)
		}
		if st.event != "" && !strings.Contains(strings.Join(evs, "|"), st.event) {
			t.Errorf("%s: events %q lack %q", st.name, evs, st.event)
		}
		if st.event == "" && len(evs) > 0 {
			t.Errorf("%s: unexpected events %q", st.name, evs)
		}
	}

	// The per-Deployment gauges are collected from the decisions, and gone
	// with the Deployment.
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.Collector(c, metrics.Full))
	want := `
# HELP microscaling_current_replicas spec.replicas of the Deployment when the decision was made.
# TYPE microscaling_current_replicas gauge
microscaling_current_replicas{deployment="consumer",namespace="ns"} 1
# HELP microscaling_desired_replicas Replicas the last decision asked for.
# TYPE microscaling_desired_replicas gauge
microscaling_desired_replicas{deployment="consumer",namespace="ns"} 1
# HELP microscaling_member_info Always 1 for a decided member; its labels say its group, rule and priority (join on namespace, deployment).
# TYPE microscaling_member_info gauge
microscaling_member_info{deployment="consumer",group="consumer",namespace="ns",priority="1",rule="queue"} 1
# HELP microscaling_queue_backlog Messages waiting, in flight or deferred on the Deployment's queues.
# TYPE microscaling_queue_backlog gauge
microscaling_queue_backlog{deployment="consumer",namespace="ns"} 0
# HELP microscaling_queue_target The target-queue-length of the Deployment.
# TYPE microscaling_queue_target gauge
microscaling_queue_target{deployment="consumer",namespace="ns"} 10
# HELP microscaling_queue_unreadable 1 while the Deployment's queue cannot be read: the member is held (or at its fallback-replicas); else 0.
# TYPE microscaling_queue_unreadable gauge
microscaling_queue_unreadable{deployment="consumer",namespace="ns"} 0
# HELP microscaling_fallback_active 1 while the Deployment is at its fallback-replicas, its queues unreadable for fallback-after; else 0.
# TYPE microscaling_fallback_active gauge
microscaling_fallback_active{deployment="consumer",namespace="ns"} 0
# HELP microscaling_min_replicas The min-replicas of the Deployment.
# TYPE microscaling_min_replicas gauge
microscaling_min_replicas{deployment="consumer",namespace="ns"} 1
# HELP microscaling_max_replicas The max-replicas of the Deployment.
# TYPE microscaling_max_replicas gauge
microscaling_max_replicas{deployment="consumer",namespace="ns"} 5
# HELP microscaling_member_held Always 1 for a decided member; reason says what keeps it from what its load asks for (max, min, max-delta, rate-limit, delay, unreadable, fallback, paused, budget, room, priority, saturated, conflict), none when nothing does.
# TYPE microscaling_member_held gauge
microscaling_member_held{deployment="consumer",namespace="ns",reason="min"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "microscaling_current_replicas", "microscaling_desired_replicas", "microscaling_member_info",
		"microscaling_queue_backlog", "microscaling_queue_target", "microscaling_queue_unreadable", "microscaling_fallback_active",
		"microscaling_min_replicas", "microscaling_max_replicas", "microscaling_member_held"); err != nil {
		t.Error(err)
	}
	// Compact: replicas, the backlog, and only the states that are set.
	compact := prometheus.NewRegistry()
	compact.MustRegister(metrics.Collector(c, metrics.Compact))
	want = `
# HELP microscaling_current_replicas spec.replicas of the Deployment when the decision was made.
# TYPE microscaling_current_replicas gauge
microscaling_current_replicas{deployment="consumer",namespace="ns"} 1
# HELP microscaling_desired_replicas Replicas the last decision asked for.
# TYPE microscaling_desired_replicas gauge
microscaling_desired_replicas{deployment="consumer",namespace="ns"} 1
# HELP microscaling_queue_backlog Messages waiting, in flight or deferred on the Deployment's queues.
# TYPE microscaling_queue_backlog gauge
microscaling_queue_backlog{deployment="consumer",namespace="ns"} 0
# HELP microscaling_member_held Always 1 for a decided member; reason says what keeps it from what its load asks for (max, min, max-delta, rate-limit, delay, unreadable, fallback, paused, budget, room, priority, saturated, conflict), none when nothing does.
# TYPE microscaling_member_held gauge
microscaling_member_held{deployment="consumer",namespace="ns",reason="min"} 1
`
	if err := testutil.GatherAndCompare(compact, strings.NewReader(want), "microscaling_current_replicas", "microscaling_desired_replicas", "microscaling_member_info",
		"microscaling_queue_backlog", "microscaling_queue_target", "microscaling_queue_unreadable", "microscaling_fallback_active", "microscaling_member_paused",
		"microscaling_min_replicas", "microscaling_max_replicas", "microscaling_member_held", "microscaling_arrival_rate", "microscaling_service_rate"); err != nil {
		t.Errorf("compact: %v", err)
	}
	cluster.groups = nil
	tick()
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("after the Deployment is gone: %d series (%v), want 0", n, err)
	}
}

// readsQueues answers only for the queues of its last Read, like a Snapshot,
// and records what each Read asked for.
type readsQueues struct {
	mu    sync.Mutex // guards reads
	reads [][]string
}

type readOf map[annotations.QueueRef]bool

func (f *readsQueues) Read(_ context.Context, refs []queue.Ref) policy.Readings {
	var hosts []string
	r := readOf{}
	for _, q := range refs {
		hosts = append(hosts, q.Host)
		r[q.QueueRef] = true
	}
	slices.Sort(hosts)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads = append(f.reads, hosts)
	return r
}

func (r readOf) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	if !r[q] {
		return policy.QueueReading{}, fmt.Errorf("%s not read", q.Host)
	}
	return policy.QueueReading{Backlog: 100, Waiting: 100, Consumers: 1}, nil
}

func (f *readsQueues) take() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.reads {
		out = append(out, strings.Join(r, "+"))
	}
	f.reads = nil
	return strings.Join(out, " ")
}

// nsqConsumer is a Deployment of namespace ns at 1 replica reading topic
// t of the nsqd at host (target 10, max 5).
func nsqConsumer(name, host string) *appsv1.Deployment {
	replicas := int32(1)
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", ResourceVersion: "1",
		Annotations: map[string]string{annotations.Queue: "nsq://" + host + "/t/c", annotations.TargetQueueLength: "10", annotations.MaxReplicas: "5"}},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ReadyReplicas: replicas}}
}

// The queues are read while the members are listed, with the last tick's
// queues; a queue that read did not cover is read on the same tick.
func TestControllerReadsNewQueuesOnTheirFirstTick(t *testing.T) {
	cluster := &fakeCluster{groups: map[string][]*appsv1.Deployment{"ns/a": {nsqConsumer("a", "h1:1")}}}
	queues := &readsQueues{}
	writer := &fakeWriter{cluster: cluster}
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(Config{Interval: time.Second, Workers: 2}, cluster, queues, testExec(writer, record.NewFakeRecorder(100), clk, false), metrics.NewMetrics(prometheus.NewRegistry()), clk)
	ctx := t.Context()
	steps := []struct {
		name         string
		add          string // a group with a consumer on this host, added before the tick
		change       func() // before the tick
		reads, write string
	}{
		{name: "first tick reads after listing", reads: "h1:1", write: "a=5"},
		{name: "steady: one read, begun with the listing", reads: "h1:1"},
		{name: "a new nsqd is read and decided on the same tick", add: "h2:1", reads: "h1:1 h1:1+h2:1", write: "b=5"},
		{name: "then one read again", reads: "h1:1+h2:1"},
		{name: "a queue renamed is read on the same tick", change: func() {
			d := nsqConsumer("b", "h3:1")
			d.ResourceVersion = "2"
			cluster.groups["ns/b"] = []*appsv1.Deployment{d}
		}, reads: "h1:1+h2:1 h1:1+h3:1", write: "b=5"},
		{name: "the old host is no longer read", reads: "h1:1+h3:1"},
		{name: "a member gone: its queue is read once more while listing", change: func() {
			delete(cluster.groups, "ns/b")
		}, reads: "h1:1+h3:1"},
		{name: "then no more", reads: "h1:1"},
		{name: "a spec made invalid keeps its last good queues", change: func() {
			d := nsqConsumer("a", "h1:1")
			d.ResourceVersion, d.Annotations[annotations.Queue] = "3", "nsq://"
			cluster.groups["ns/a"] = []*appsv1.Deployment{d}
		}, reads: "h1:1", write: "a=5"},
	}
	for _, st := range steps {
		if st.change != nil {
			st.change()
		}
		if st.add != "" {
			cluster.groups["ns/b"] = []*appsv1.Deployment{nsqConsumer("b", st.add)}
		}
		clk.Step(time.Second)
		c.runTick(ctx, clk.Now())
		writes := writer.take()
		slices.Sort(writes)
		if got := queues.take(); got != st.reads {
			t.Errorf("%s: reads %q, want %q", st.name, got, st.reads)
		}
		if got := strings.Join(writes, ","); got != st.write {
			t.Errorf("%s: writes %q, want %q", st.name, got, st.write)
		}
	}
}

// A group whose last decision changed nothing is quiet: the next tick runs
// its queue rules but skips the allocation while every input of it is the
// same; any change of a queue, of a member or of a read is decided in full on
// that same tick, with the same writes and Events as without the shortcut.
func TestQuietGroupsWakeOnAnyChange(t *testing.T) {
	f := newConsumerFixture(t)
	consumer, queues, writer, rec, clk, c, ctx := f.consumer, f.queues, f.writer, f.rec, f.clk, f.c, f.ctx
	steps := []struct {
		name             string
		backlog, arrived int64
		err              error
		touch            bool // a new resourceVersion, as any change of the Deployment gives
		write, event     string
		quiet            bool // after the tick
	}{
		{name: "first decision changes nothing", quiet: true},
		{name: "still empty: quiet", quiet: true},
		{name: "messages came and went within the tick: one replica still wanted", arrived: 40, quiet: true},
		{name: "a backlog wakes it on the same tick", backlog: 30, arrived: 70, write: "consumer=3", event: "Scaled consumer 1 -> 3"},
		// Service rate unknown (the replicas were never busy for a whole tick):
		// one replica at a time.
		{name: "drained: one down", arrived: 70, write: "consumer=2", event: "Scaled consumer 3 -> 2"},
		{name: "drained: down to min", arrived: 70, write: "consumer=1", event: "Scaled consumer 2 -> 1"},
		{name: "idle at min", arrived: 70, quiet: true},
		{name: "one failed read: held, not told", arrived: 70, err: errors.New("nsqd down"), quiet: true},
		{name: "an unreadable quiet group is told of and held", arrived: 70, err: errors.New("nsqd down"), event: "QueueUnreadable", quiet: true},
		{name: "readable again: told of", arrived: 70, event: "QueueReadable", quiet: true},
		{name: "a changed Deployment is decided", arrived: 70, touch: true, quiet: true},
		{name: "a backlog again", backlog: 50, arrived: 120, write: "consumer=5", event: "Scaled consumer 1 -> 5"},
	}
	for _, st := range steps {
		queues.mu.Lock()
		queues.backlog, queues.arrived, queues.err = st.backlog, st.arrived, st.err
		queues.mu.Unlock()
		if st.touch {
			consumer.ResourceVersion += "t"
		}
		clk.Step(time.Second)
		c.runTick(ctx, clk.Now())
		if got := strings.Join(writer.take(), ","); got != st.write {
			t.Errorf("%s: writes %q, want %q", st.name, got, st.write)
		}
		var evs []string
		for len(rec.Events) > 0 {
			evs = append(evs, <-rec.Events)
		}
		if (st.event == "") != (len(evs) == 0) || !strings.Contains(strings.Join(evs, "|"), st.event) {
			t.Errorf("%s: events %q, want one with %q", st.name, evs, st.event)
		}
		if got := c.groups["ns/consumer"].decision.Quiet(); got != st.quiet {
			t.Errorf("%s: quiet = %v, want %v", st.name, got, st.quiet)
		}
	}
}

// An annotation error is counted by key, but a key that is not the
// contract's (a tenant's typo, any string) is counted as "unknown": label
// values never come from tenant input.
func TestAnnotationErrorKeysAreBounded(t *testing.T) {
	f := newConsumerFixture(t)
	f.consumer.Annotations["microscaling.com/evil-"+strings.Repeat("x", 40)] = "1"
	f.consumer.Annotations[annotations.MaxReplicas] = "-1"
	f.consumer.ResourceVersion += "t"
	f.clk.Step(time.Second)
	f.c.runTick(f.ctx, f.clk.Now())
	for key, want := range map[string]float64{"unknown": 1, annotations.MaxReplicas: 1} {
		if got := testutil.ToFloat64(f.c.metrics.AnnotationErrors.WithLabelValues("ns", "consumer", key)); got != want {
			t.Errorf("annotation errors for key %q = %v, want %v", key, got, want)
		}
	}
	if n := testutil.CollectAndCount(f.c.metrics.AnnotationErrors); n != 2 {
		t.Errorf("%d annotation error series, want 2", n)
	}
}

// A Deployment that another autoscaler targets is left alone, said once
// with a Warning naming it and a gauge; when the other goes, it is told and
// decided again on that tick. In a dry run it is decided beside the other.
func TestControllerLeavesAnotherAutoscalersDeploymentAlone(t *testing.T) {
	for _, dryRun := range []bool{false, true} {
		t.Run(fmt.Sprintf("dry run %v", dryRun), func(t *testing.T) {
			f := newConsumerFixture(t)
			f.c = New(Config{Interval: time.Second, Workers: 2}, f.cluster, f.queues, testExec(f.writer, f.rec, f.clk, dryRun), metrics.NewMetrics(prometheus.NewRegistry()), f.clk)
			reg := prometheus.NewRegistry()
			reg.MustRegister(metrics.Collector(f.c, metrics.Full))
			f.queues.mu.Lock()
			f.queues.backlog = 400
			f.queues.mu.Unlock()
			f.cluster.mu.Lock()
			f.cluster.hpas = map[string][]string{"ns/consumer": {"keda-hpa-consumer"}}
			f.cluster.mu.Unlock()
			tick := func() (string, string) {
				f.clk.Step(time.Second)
				f.c.runTick(f.ctx, f.clk.Now())
				var evs []string
				for len(f.rec.Events) > 0 {
					evs = append(evs, <-f.rec.Events)
				}
				return strings.Join(f.writer.take(), ","), strings.Join(evs, " | ")
			}
			conflicting := func() float64 {
				t.Helper()
				mfs, err := reg.Gather()
				if err != nil {
					t.Fatal(err)
				}
				for _, mf := range mfs {
					if mf.GetName() == "microscaling_conflicting_autoscaler" {
						return mf.GetMetric()[0].GetGauge().GetValue()
					}
				}
				return 0
			}
			writes, evs := tick()
			if dryRun {
				if writes != "" || !strings.Contains(evs, "Normal ConflictingAutoscaler dry run: deciding beside HorizontalPodAutoscaler keda-hpa-consumer") || !strings.Contains(evs, "ScaledDryRun") {
					t.Fatalf("shadowing: writes %q, events %q", writes, evs)
				}
				return
			}
			if writes != "" || evs != "Warning ConflictingAutoscaler left alone: HorizontalPodAutoscaler keda-hpa-consumer also scales this Deployment; delete it (or remove the microscaling.com/ annotations) so that one autoscaler decides" {
				t.Fatalf("with an HPA: writes %q, events %q; want none and one Warning", writes, evs)
			}
			if g := conflicting(); g != 1 {
				t.Errorf("microscaling_conflicting_autoscaler = %v, want 1", g)
			}
			if writes, evs := tick(); writes != "" || evs != "" {
				t.Errorf("still an HPA: writes %q, events %q; want nothing", writes, evs)
			}
			f.cluster.mu.Lock()
			f.cluster.hpas = nil
			f.cluster.mu.Unlock()
			writes, evs = tick()
			if writes != "consumer=5" || !strings.Contains(evs, "Normal AutoscalerGone") || strings.Contains(evs, "ExternalScale") {
				t.Errorf("HPA gone: writes %q, events %q; want consumer=5 and AutoscalerGone", writes, evs)
			}
			if g := conflicting(); g != 0 {
				t.Errorf("microscaling_conflicting_autoscaler = %v after the HPA went, want 0", g)
			}
		})
	}
}

// The state gauges follow the member: an unreadable queue, invalid
// annotations and paused are each 1 while they last.
func TestStateGauges(t *testing.T) {
	f := newConsumerFixture(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.Collector(f.c, metrics.Full))
	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return 0
	}
	tick := func() {
		f.clk.Step(time.Second)
		f.c.runTick(f.ctx, f.clk.Now())
	}
	f.queues.mu.Lock()
	f.queues.err = errors.New("nsqd down")
	f.queues.mu.Unlock()
	tick()
	if g := gauge("microscaling_queue_unreadable"); g != 0 {
		t.Errorf("one failed read: gauge %v, want 0 (not told yet)", g)
	}
	tick()
	if g := gauge("microscaling_queue_unreadable"); g != 1 {
		t.Errorf("queue unreadable: gauge %v, want 1", g)
	}
	// In compact detail a state has a series only while it is set.
	compact := prometheus.NewRegistry()
	compact.MustRegister(metrics.Collector(f.c, metrics.Compact))
	series := func(name string) int {
		t.Helper()
		n, err := testutil.GatherAndCount(compact, name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if u, i := series("microscaling_queue_unreadable"), series("microscaling_annotations_invalid"); u != 1 || i != 0 {
		t.Errorf("compact, unreadable: %d unreadable and %d invalid series, want 1 and 0", u, i)
	}
	f.queues.mu.Lock()
	f.queues.err = nil
	f.queues.mu.Unlock()
	f.consumer.Annotations = maps.Clone(f.consumer.Annotations) // the cache replaces objects, never edits them
	f.consumer.Annotations[annotations.Paused] = "maybe"
	f.consumer.ResourceVersion += "t"
	tick()
	if g, u := gauge("microscaling_annotations_invalid"), gauge("microscaling_queue_unreadable"); g != 1 || u != 0 {
		t.Errorf("invalid annotations, queue readable: invalid %v, unreadable %v; want 1, 0", g, u)
	}
	if u, i := series("microscaling_queue_unreadable"), series("microscaling_annotations_invalid"); u != 0 || i != 1 {
		t.Errorf("compact, invalid and readable: %d unreadable and %d invalid series, want 0 and 1", u, i)
	}
	f.consumer.Annotations = maps.Clone(f.consumer.Annotations)
	f.consumer.Annotations[annotations.Paused] = "true"
	f.consumer.ResourceVersion += "t"
	tick()
	if g, p := gauge("microscaling_annotations_invalid"), gauge("microscaling_member_paused"); g != 0 || p != 1 {
		t.Errorf("paused: invalid %v, paused %v; want 0, 1", g, p)
	}
}

// A namespace naming more queue hosts than QueueHostsPerNamespace has the
// ones past the bound (in sorted order, the same every tick) left unread and
// their members held with a Warning; another namespace is untouched.
func TestQueueHostsPerNamespace(t *testing.T) {
	consumer := func(ns, name, host string) *appsv1.Deployment {
		replicas := int32(1)
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, ResourceVersion: "1",
			Annotations: map[string]string{annotations.Queue: "nsq://" + host + "/t/c", annotations.TargetQueueLength: "10", annotations.MaxReplicas: "5"}},
			Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ReadyReplicas: replicas}}
	}
	cluster := &fakeCluster{groups: map[string][]*appsv1.Deployment{}}
	for i, h := range []string{"h3:1", "h1:1", "h2:1"} {
		name := fmt.Sprintf("m%d", i)
		cluster.groups["greedy/"+name] = []*appsv1.Deployment{consumer("greedy", name, h)}
	}
	cluster.groups["other/x"] = []*appsv1.Deployment{consumer("other", "x", "h3:1")}
	queues := &readsQueues{}
	writer := &fakeWriter{cluster: cluster}
	rec := record.NewFakeRecorder(100)
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(Config{Interval: time.Second, Workers: 2, QueueHostsPerNamespace: 2}, cluster, queues, testExec(writer, rec, clk, false), metrics.NewMetrics(prometheus.NewRegistry()), clk)
	for range 2 {
		clk.Step(time.Second)
		c.runTick(t.Context(), clk.Now())
	}
	writes := writer.take()
	slices.Sort(writes)
	// greedy's h1 and h2 are read and decided; its h3 is not, but other's is.
	if got := strings.Join(writes, ","); got != "m1=5,m2=5,x=5" {
		t.Errorf("writes %q, want m1=5,m2=5,x=5 (greedy/m0 on h3 held)", got)
	}
	if got := queues.take(); got != "h1:1+h2:1+h3:1 h1:1+h2:1+h3:1" {
		t.Errorf("reads %q", got)
	}
	held := drained(rec, "QueueUnreadable")
	if len(held) != 1 || !strings.Contains(held[0], "namespace greedy names more than 2 queue hosts") {
		t.Errorf("QueueUnreadable Events %q, want one for greedy/m0 naming the bound", held)
	}
}

// Each nsqlookupd topic is a request a tick, so each counts toward the cap:
// one lookupd asked for three topics by a namespace capped at 2 has one of
// them left unread, its member held.
func TestLookupTopicsCountTowardTheCap(t *testing.T) {
	cluster := &fakeCluster{groups: map[string][]*appsv1.Deployment{}}
	for i, topic := range []string{"ta", "tb", "tc"} {
		replicas := int32(1)
		name := fmt.Sprintf("m%d", i)
		cluster.groups["greedy/"+name] = []*appsv1.Deployment{{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "greedy", ResourceVersion: "1",
			Annotations: map[string]string{annotations.Queue: "nsqlookupd://lookupd:4161/" + topic + "/c", annotations.TargetQueueLength: "10", annotations.MaxReplicas: "5"}},
			Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ReadyReplicas: replicas}}}
	}
	rec := record.NewFakeRecorder(100)
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(Config{Interval: time.Second, Workers: 2, QueueHostsPerNamespace: 2}, cluster, &readsQueues{}, testExec(&fakeWriter{cluster: cluster}, rec, clk, false), metrics.NewMetrics(prometheus.NewRegistry()), clk)
	for range unreadableAfter {
		clk.Step(time.Second)
		c.runTick(t.Context(), clk.Now())
	}
	held := drained(rec, "QueueUnreadable")
	if len(held) != 1 || !strings.Contains(held[0], "namespace greedy names more than 2 queue hosts") {
		t.Errorf("QueueUnreadable Events %q, want one (the third topic) naming the bound", held)
	}
}

// Removing the queue of a managed Deployment releases it with a Normal
// Event, whether what is left no longer makes it managed (the informer
// drops it) or no longer parses (rule: queue left behind): no write follows
// however large the backlog, its gauges go, and naming a queue again takes
// it back.
func TestRemovingTheQueueReleases(t *testing.T) {
	for _, tc := range []struct {
		name        string
		explicit    bool // microscaling.com/rule: queue stays, so it is still listed
		stillListed bool
	}{
		{name: "no rule left: no longer managed"},
		{name: "rule: queue left: no longer parses", explicit: true, stillListed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newConsumerFixture(t)
			if tc.explicit {
				f.consumer.Annotations[annotations.Rule] = "queue"
			}
			tick := func() []string {
				f.clk.Step(time.Second)
				f.c.runTick(f.ctx, f.clk.Now())
				return f.writer.take()
			}
			events := func() string {
				var evs []string
				for len(f.rec.Events) > 0 {
					evs = append(evs, <-f.rec.Events)
				}
				return strings.Join(evs, "|")
			}
			f.queues.backlog = 5
			tick()
			events()
			ann := f.consumer.Annotations
			f.consumer.Annotations = maps.Clone(ann) // a new object from the informer, as the API server sends it
			delete(f.consumer.Annotations, annotations.Queue)
			f.consumer.ResourceVersion = "2"
			groups := f.cluster.groups
			if !tc.stillListed {
				f.cluster.groups, f.cluster.unmanaged = nil, []*appsv1.Deployment{f.consumer}
			}
			f.queues.backlog = 1000
			if w := tick(); len(w) != 0 {
				t.Errorf("writes %q after the queue was removed, want none", w)
			}
			if evs := events(); !strings.Contains(evs, "Normal Released microscaling.com/queue removed: microscaling no longer scales this Deployment") || strings.Contains(evs, "InvalidAnnotation") {
				t.Errorf("events %q, want one Normal Released and no InvalidAnnotation", evs)
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(metrics.Collector(f.c, metrics.Full))
			if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
				t.Errorf("a released Deployment has %d series (%v), want none", n, err)
			}
			if tick(); events() != "" {
				t.Error("told again on the next tick")
			}
			f.consumer.Annotations, f.consumer.ResourceVersion = ann, "3"
			f.cluster.groups, f.cluster.unmanaged = groups, nil
			if w := tick(); strings.Join(w, ",") != "consumer=5" {
				t.Errorf("writes %q once the queue is back, want consumer=5", w)
			}
		})
	}
}

// drained closes rec and returns the Events it recorded that carry reason.
func drained(rec *record.FakeRecorder, reason string) []string {
	close(rec.Events)
	var out []string
	for e := range rec.Events {
		if strings.Contains(e, reason) {
			out = append(out, e)
		}
	}
	return out
}

// gatedQueues reads every queue at once but those of the hung hosts, whose
// readings wait for gate; it tells which are ready, as the sources do.
type gatedQueues struct {
	hung map[string]bool
	gate chan struct{}
}

func (g *gatedQueues) Read(context.Context, []queue.Ref) policy.Readings { return g }
func (g *gatedQueues) Pending(q annotations.QueueRef) <-chan struct{} {
	if !g.hung[q.Host] {
		return nil
	}
	return queue.Open(g.gate)
}
func (g *gatedQueues) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	if g.hung[q.Host] {
		<-g.gate
	}
	return policy.QueueReading{Backlog: 100, Waiting: 100, Consumers: 1000}, nil
}

// A group whose queue answered is decided while twenty groups whose hosts
// hang wait for theirs, even with one worker.
func TestGroupsWithAnswersAreDecidedFirst(t *testing.T) {
	cluster := &fakeCluster{groups: map[string][]*appsv1.Deployment{"ns/fast": {nsqConsumer("fast", "fast:1")}}}
	queues := &gatedQueues{hung: map[string]bool{}, gate: make(chan struct{})}
	for i := range 20 {
		host := fmt.Sprintf("hung-%d:1", i)
		queues.hung[host] = true
		cluster.groups[fmt.Sprintf("ns/hung-%d", i)] = []*appsv1.Deployment{nsqConsumer(fmt.Sprintf("hung-%d", i), host)}
	}
	writer := &fakeWriter{cluster: cluster}
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(Config{Interval: time.Second, Workers: 1}, cluster, queues, testExec(writer, record.NewFakeRecorder(1000), clk, false), metrics.NewMetrics(prometheus.NewRegistry()), clk)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.runTick(t.Context(), clk.Now())
	}()
	err := wait.PollUntilContextTimeout(t.Context(), time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		writer.mu.Lock()
		defer writer.mu.Unlock()
		return slices.Contains(writer.writes, "fast=5"), nil
	})
	close(queues.gate)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the tick did not end once the hung hosts answered")
	}
	if err != nil {
		t.Errorf("fast was not scaled while the hung groups waited: %v (writes %v)", err, writer.take())
	}
	if w := writer.take(); len(w) != 21 {
		t.Errorf("%d writes once the hung hosts answered, want 21 (every group scaled up): %v", len(w), w)
	}
}

// holdingQueues is fakeQueues whose consumers hold messages (queue.Holder).
type holdingQueues struct {
	*fakeQueues
	held queue.Holdings
	err  error
}

func (h *holdingQueues) Held(context.Context, string, annotations.QueueRef) (queue.Holdings, error) {
	return h.held, h.err
}

// marks records, in the writer's sequence, each Mark and what it was given.
type marks struct {
	w   *fakeWriter
	err error
}

func (m *marks) Mark(_ context.Context, d *snapshot.Object, h queue.Holdings) (int, error) {
	m.w.mu.Lock()
	defer m.w.mu.Unlock()
	m.w.writes = append(m.w.writes, fmt.Sprintf("mark %s %v", d.Name, h.ByHostname))
	return len(h.ByHostname), m.err
}

func TestIdleFirstMarksBeforeEachScaleDown(t *testing.T) {
	f := newConsumerFixture(t)
	var held queue.Holdings
	held.Add([]queue.Consumer{{Hostname: "consumer-a", Held: 3}, {Hostname: "consumer-b"}})
	q := &holdingQueues{fakeQueues: f.queues, held: held}
	m := &marks{w: f.writer}
	c := New(Config{Interval: time.Second, Workers: 2, IdleFirst: m}, f.cluster, q, testExec(f.writer, f.rec, f.clk, false), metrics.NewMetrics(prometheus.NewRegistry()), f.clk)
	tick := func(backlog int64) string {
		f.queues.mu.Lock()
		f.queues.backlog = backlog
		f.queues.mu.Unlock()
		// A few ticks: a decision may wait for the cache or a rate.
		for range 5 {
			f.clk.Step(time.Second)
			c.runTick(f.ctx, f.clk.Now())
			if w := f.writer.take(); len(w) > 0 {
				return strings.Join(w, ",")
			}
		}
		return ""
	}
	if got := tick(40); got != "consumer=4" {
		t.Fatalf("scale-up: %q, want the write alone (no mark)", got)
	}
	if got := tick(0); got != "mark consumer map[consumer-a:3 consumer-b:0],consumer=1" {
		t.Fatalf("scale-down: %q, want the mark, then the write", got)
	}
	events := func(reason string) []string {
		var out []string
		for len(f.rec.Events) > 0 {
			if e := <-f.rec.Events; strings.Contains(e, reason) {
				out = append(out, e)
			}
		}
		return out
	}
	events("")

	// A queue that cannot say, or a mark that fails: told once, and the
	// scale-down is written all the same.
	q.err = errors.New("nsqd: connection refused")
	tick(40)
	if got := tick(0); got != "consumer=1" {
		t.Errorf("holdings unreadable: %q, want the write alone", got)
	}
	tick(40)
	tick(0)
	if evs := events(execute.ReasonIdleFirstFailed); len(evs) != 1 || !strings.Contains(evs[0], "nsq://h:1: nsqd: connection refused") {
		t.Errorf("IdleFirstFailed events %q, want one naming the queue and the error", evs)
	}
	q.err, m.err = nil, errors.New("pods is forbidden")
	tick(40)
	if got := tick(0); got != "mark consumer map[consumer-a:3 consumer-b:0],consumer=1" {
		t.Errorf("mark failing: %q, want the mark tried, then the write", got)
	}
	if evs := events(execute.ReasonIdleFirstFailed); len(evs) != 1 || !strings.Contains(evs[0], "pods is forbidden") {
		t.Errorf("IdleFirstFailed events %q, want one with the mark's error", evs)
	}

	// A queue whose source cannot tell is not a failure: nothing marked.
	q.err, m.err = queue.ErrNoHoldings, nil
	tick(40)
	if got := tick(0); got != "consumer=1" {
		t.Errorf("no holdings: %q, want the write alone", got)
	}
	if evs := events(execute.ReasonIdleFirstFailed); len(evs) != 0 {
		t.Errorf("no holdings told as a failure: %q", evs)
	}
}

// lastConds keeps the last condition set on each member.
type lastConds struct {
	mu   sync.Mutex
	last map[string]string
}

func (c *lastConds) Set(d *snapshot.Object, cond condition.Condition) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last[d.Name] = cond.Reason
}
func (c *lastConds) Clear(*snapshot.Object) {}
func (c *lastConds) Forget(string, string)  {}

func (c *lastConds) of(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last[name]
}

// A lone failed read holds the member and tells nothing: its condition,
// gauges and Events stay as the last read left them. One slow answer of a
// busy queue server fails every member on it at once; telling each would
// be an Event and a status write per member, twice.
func TestLoneFailedReadNotTold(t *testing.T) {
	f := newConsumerFixture(t)
	conds := &lastConds{last: map[string]string{}}
	f.c = New(Config{Interval: time.Second, Workers: 2}, f.cluster, f.queues,
		execute.New(execute.Config{Writer: f.writer, Recorder: f.rec, Metrics: metrics.NewMetrics(prometheus.NewRegistry()), Conditions: conds}, f.clk),
		metrics.NewMetrics(prometheus.NewRegistry()), f.clk)
	steps := []struct {
		name   string
		err    error
		reason string // the member's condition after the tick
		event  string
	}{
		{name: "read", reason: "FollowingLoad"},
		{name: "one failed read", err: errors.New("nsqd slow"), reason: "FollowingLoad"},
		{name: "read again", reason: "FollowingLoad"},
		{name: "failed", err: errors.New("nsqd down"), reason: "FollowingLoad"},
		{name: "failed again: told", err: errors.New("nsqd down"), reason: execute.ReasonQueueUnreadable, event: "Warning QueueUnreadable holding at 1 replicas: nsqd down"},
		{name: "read: told", reason: "FollowingLoad", event: "Normal QueueReadable queue read again: backlog 5"},
	}
	for _, st := range steps {
		f.queues.mu.Lock()
		f.queues.backlog, f.queues.err = 5, st.err
		f.queues.mu.Unlock()
		f.clk.Step(time.Second)
		f.c.runTick(f.ctx, f.clk.Now())
		if w := f.writer.take(); len(w) > 0 {
			t.Errorf("%s: writes %q, want none (held at 1)", st.name, w)
		}
		if got := conds.of("consumer"); got != st.reason {
			t.Errorf("%s: condition reason %q, want %q", st.name, got, st.reason)
		}
		var evs []string
		for len(f.rec.Events) > 0 {
			evs = append(evs, <-f.rec.Events)
		}
		if want := slices.DeleteFunc([]string{st.event}, func(s string) bool { return s == "" }); !slices.Equal(evs, want) {
			t.Errorf("%s: events %q, want %q", st.name, evs, want)
		}
	}
}
