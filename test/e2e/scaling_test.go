package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

var bigNodes = []harness.Node{{Name: "node-1", CPU: "16", Memory: "32Gi"}}

// Scenario 1: a consumer scales up with its backlog and back down to min.
func TestConsumerFollowsBacklog(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "50", "min-replicas", "1", "max-replicas", "10", "scale-down-delay", "2s")))
	c := startController(t, s.Kubeconfig)
	consumers(t, s, "default", "consumer", "jobs", "work", 20*time.Millisecond)
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 1000); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	waitEvent(t, s, "default", "consumer", "backlog", 5*time.Second)
	// Drained, it goes back to its min.
	waitReplicas(t, s, "default", "consumer", 90*time.Second, "1 (min)", func(n int32) bool { return n == 1 })
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		b, err := c.metric(ctx, "microscaling_queue_backlog", `deployment="consumer"`)
		if err != nil || b != 0 {
			return fmt.Errorf("backlog metric %v (%v), want 0", b, err)
		}
		return nil
	})
}

// Scenario 2: the remainder fills spare room, hands it to the consumer in one
// tick when the backlog rises, and takes it back when the backlog clears.
func TestRemainderGivesWayToConsumer(t *testing.T) {
	// Two nodes of 1 CPU, pods of 200m: room for 10 pods.
	s := tenPodGroup(t)
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "background", 15*time.Second, "9 (the spare room)", func(n int32) bool { return n == 9 })
	assertNoPending(t, s, "background")
	backlogGrowsConsumer(t, s, 10*time.Second)
	// Within the same decision the remainder made room: the group never asks for more than fits.
	cr := mustReplicas(t, s, "default", "consumer")
	br := mustReplicas(t, s, "default", "background")
	if cr+br > 10 {
		t.Errorf("consumer %d + background %d > 10 pods of room", cr, br)
	}
	waitEvent(t, s, "default", "background", "taken by higher priorities", 5*time.Second)
	// No consumer pod stays Pending for want of the remainder's room.
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		n, err := replicas(ctx, s, "default", "consumer")
		if err != nil {
			return err
		}
		running, pending, err := podCounts(ctx, s, "consumer")
		if err != nil {
			return err
		}
		if pending > 0 || running < int(min(n, 10)) {
			return fmt.Errorf("consumer pods: %d running, %d pending of %d", running, pending, n)
		}
		return nil
	})
	// The backlog clears: the consumer shrinks and the remainder takes the room back.
	waitReplicas(t, s, "default", "consumer", 90*time.Second, "1", func(n int32) bool { return n == 1 })
	waitReplicas(t, s, "default", "background", 15*time.Second, "9", func(n int32) bool { return n == 9 })
	assertNoPending(t, s, "background")
}

// tenPodGroup starts a stack of two 1-CPU nodes, room for 10 pods of 200m,
// with a group of a consumer (target 20, min 1, max 10) and a remainder.
func tenPodGroup(t *testing.T) *harness.Stack {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "1", Memory: "8Gi"}, {Name: "n2", CPU: "1", Memory: "8Gi"}}})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "group", "demo", "priority", "1",
		"target-queue-length", "20", "min-replicas", "1", "max-replicas", "10", "scale-down-delay", "2s"), "200m"))
	create(t, s, deployment("default", "background", 0, map[string]string{"microscaling.com/group": "demo",
		"microscaling.com/priority": "2", "microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "20"}, "200m"))
	return s
}

// backlogGrowsConsumer runs real consumers for the consumer's Running pods,
// publishes 400 messages and waits for the consumer to pass 4 replicas.
func backlogGrowsConsumer(t *testing.T, s *harness.Stack, within time.Duration) {
	t.Helper()
	consumers(t, s, "default", "consumer", "jobs", "work", 100*time.Millisecond)
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 400); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", within, "more than 4", func(n int32) bool { return n > 4 })
}

func podCounts(ctx context.Context, s *harness.Stack, app string) (running, pending int, err error) {
	pods, err := s.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app": app}.String()})
	if err != nil {
		return 0, 0, fmt.Errorf("listing the pods of %s: %w", app, err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		switch p.Status.Phase {
		case corev1.PodRunning:
			running++
		case corev1.PodPending:
			pending++
		}
	}
	return running, pending, nil
}

func assertNoPending(t *testing.T, s *harness.Stack, app string) {
	t.Helper()
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		n, err := replicas(ctx, s, "default", app)
		if err != nil {
			return err
		}
		running, pending, err := podCounts(ctx, s, app)
		if err != nil {
			return err
		}
		if pending != 0 || running != int(n) {
			return fmt.Errorf("%s: %d running, %d pending, want %d running", app, running, pending, n)
		}
		return nil
	})
}

// Scenario 3: group-max-replicas caps the group's total.
func TestGroupBudget(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "group", "capped", "group-max-replicas", "6",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "20")))
	create(t, s, deployment("default", "background", 0, map[string]string{"microscaling.com/group": "capped",
		"microscaling.com/rule": "remainder", "microscaling.com/priority": "2", "microscaling.com/max-replicas": "20",
		"microscaling.com/group-max-replicas": "6"}))
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "background", 15*time.Second, "5", func(n int32) bool { return n == 5 })
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 2000); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "6", func(n int32) bool { return n == 6 })
	waitReplicas(t, s, "default", "background", 5*time.Second, "0", func(n int32) bool { return n == 0 })
	// It stays capped while the backlog stays.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		c := mustReplicas(t, s, "default", "consumer")
		b := mustReplicas(t, s, "default", "background")
		if c+b > 6 {
			t.Fatalf("group total %d > budget 6", c+b)
		}
		time.Sleep(200 * time.Millisecond) // sampling the total over a few ticks
	}
}

// Scenario 4: a paused Deployment is never written, even with a huge backlog.
func TestPausedIsLeftAlone(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "paused", 2, queueAnn(s, "jobs", "work", "paused", "true",
		"target-queue-length", "10", "max-replicas", "20")))
	create(t, s, deployment("default", "witness", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "max-replicas", "20")))
	c := startController(t, s.Kubeconfig)
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 1000); err != nil {
		t.Fatal(err)
	}
	// The witness on the same queue scales: the controller saw the backlog.
	waitReplicas(t, s, "default", "witness", 10*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	before := mustDeployment(t, s, "default", "paused")
	// Let a few more ticks pass, then check nothing touched it.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		ticks, err := c.metric(ctx, "microscaling_tick_duration_seconds_count")
		if err != nil || ticks < 5 {
			return fmt.Errorf("%v ticks", ticks)
		}
		return nil
	})
	after := mustDeployment(t, s, "default", "paused")
	if *after.Spec.Replicas != 2 || after.Generation != before.Generation {
		t.Errorf("paused Deployment changed: replicas %d, generation %d -> %d", *after.Spec.Replicas, before.Generation, after.Generation)
	}
	evs := mustEvents(t, s, "default", "paused")
	for _, e := range evs {
		if strings.HasPrefix(e, "Normal Scaled:") {
			t.Errorf("paused Deployment got event %q", e)
		}
	}
}

// Scenario 5: every invalid annotation gets a Warning Event naming its key,
// the Deployment is untouched, and a valid group keeps scaling meanwhile.
func TestInvalidAnnotations(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	q := "nsq://" + s.NSQ.HTTPAddr + "/jobs/work"
	bad := []struct {
		name string
		ann  map[string]string
		key  string
	}{
		{"bad-target", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "lots", "microscaling.com/max-replicas": "5"}, "microscaling.com/target-queue-length"},
		{"bad-max", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "-1"}, "microscaling.com/max-replicas"},
		{"min-over-max", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "2", "microscaling.com/min-replicas": "3"}, "microscaling.com/min-replicas"},
		{"bad-rule", map[string]string{"microscaling.com/rule": "lifo", "microscaling.com/max-replicas": "5"}, "microscaling.com/rule"},
		{"bad-queue", map[string]string{"microscaling.com/queue": "kafka://x:1/t/c", "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "5"}, "microscaling.com/queue"},
		{"bad-delay", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "5", "microscaling.com/scale-down-delay": "soon"}, "microscaling.com/scale-down-delay"},
		{"typo-key", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "5", "microscaling.com/maxreplicas": "5"}, "microscaling.com/maxreplicas"},
		{"bad-priority", map[string]string{"microscaling.com/queue": q, "microscaling.com/target-queue-length": "5", "microscaling.com/max-replicas": "5", "microscaling.com/priority": "high"}, "microscaling.com/priority"},
	}
	for _, b := range bad {
		create(t, s, deployment("default", b.name, 3, b.ann))
	}
	create(t, s, deployment("default", "good", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "10")))
	startController(t, s.Kubeconfig)
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "good", 10*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			waitEvent(t, s, "default", b.name, "Warning InvalidAnnotation: "+b.key, 5*time.Second)
			d, err := s.Client.AppsV1().Deployments("default").Get(t.Context(), b.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if *d.Spec.Replicas != 3 || d.Generation != 1 {
				t.Errorf("replicas %d generation %d, want 3 and 1 (untouched)", *d.Spec.Replicas, d.Generation)
			}
		})
	}
}

// Scenario 6: nsqd down: no scale-down, a Warning; back: scaling resumes.
func TestQueueUnreadable(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 4, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "max-replicas", "10", "scale-down-delay", "0s")))
	startController(t, s.Kubeconfig, "--queue-timeout=300ms")
	// An empty queue takes it down to 0 at once: proof the rule acts.
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "0", func(n int32) bool { return n == 0 })
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 300); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "more than 0", func(n int32) bool { return n > 0 })
	held := mustReplicas(t, s, "default", "consumer")
	s.NSQ.Kill() // a crash: no goodbye, in-memory messages lost
	waitEvent(t, s, "default", "consumer", "Warning QueueUnreadable", 10*time.Second)
	for range 5 {
		n := mustReplicas(t, s, "default", "consumer")
		if n < held {
			t.Fatalf("scaled down from %d to %d while the queue was unreadable", held, n)
		}
		time.Sleep(time.Second) // five ticks without data
	}
	if err := s.NSQ.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Once nsqd is read again, normal scaling resumes: drained by consumers,
	// the queue goes to 0 and so do the replicas.
	waitEvent(t, s, "default", "consumer", "QueueReadable", 10*time.Second)
	consumers(t, s, "default", "consumer", "jobs", "work", time.Millisecond)
	waitReplicas(t, s, "default", "consumer", 30*time.Second, "0", func(n int32) bool { return n == 0 })
}

// TestFallback: with fallback-replicas 3 and fallback-after 20s, nsqd
// killed brings the consumer to 3 replicas within 22 s, with a
// FallbackActive Warning; nsqd back, a FallbackEnded Event and the queue
// rule decides again (an empty queue: down to min-replicas).
func TestFallback(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "min-replicas", "1",
		"max-replicas", "10", "scale-down-delay", "0s", "fallback-replicas", "3", "fallback-after", "20s")))
	c := startController(t, s.Kubeconfig, "--queue-timeout=300ms")
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		st, err := memberStatus(ctx, c, "consumer")
		if err == nil && !st.BacklogKnown {
			err = errors.New("the consumer's queue is not read yet")
		}
		return err
	})
	s.NSQ.Kill()
	killed := time.Now()
	waitReplicas(t, s, "default", "consumer", 40*time.Second, "3", func(n int32) bool { return n == 3 })
	took := time.Since(killed)
	t.Logf("FALLBACK: at fallback-replicas 3 %.1f s after nsqd was killed (fallback-after 20s)", took.Seconds())
	if took > 22*time.Second {
		t.Errorf("fallback-replicas reached %.1f s after nsqd was killed, want within 22 s", took.Seconds())
	}
	if took < 19*time.Second {
		// Counted from the last good read, at most a tick before the kill.
		t.Errorf("fallback-replicas reached %.1f s after nsqd was killed, before fallback-after (20s) less a tick", took.Seconds())
	}
	waitEvent(t, s, "default", "consumer", "Warning FallbackActive: queues unreadable for 20s: at fallback-replicas 3", 5*time.Second)
	if err := s.NSQ.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, "default", "consumer", "Normal FallbackEnded", 15*time.Second)
	waitReplicas(t, s, "default", "consumer", 15*time.Second, "1 (min-replicas: the queue is empty)", func(n int32) bool { return n == 1 })
}

// TestScaleUpLimit: with scale-up-limit 4/60s, a 1,000-message burst that
// asks for 20 replicas at once grows the consumer by at most 4 in any 60 s
// window, and it does grow: 5 at once, 9 a minute later.
func TestScaleUpLimit(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "min-replicas", "1",
		"max-replicas", "20", "scale-up-limit", "4/60s")))
	startController(t, s.Kubeconfig)
	type sample struct {
		at time.Duration
		n  int32
	}
	var samples []sample
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 1000); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 130*time.Second)
	defer cancel()
	every(ctx, 200*time.Millisecond, func(int) bool {
		n, err := replicas(t.Context(), s, "default", "consumer")
		if err != nil {
			t.Errorf("reading replicas: %v", err)
			return false
		}
		samples = append(samples, sample{time.Since(start), n})
		return true
	})
	worst, reached5, reached9 := int32(0), time.Duration(-1), time.Duration(-1)
	for i, a := range samples {
		for _, b := range samples[i+1:] {
			if b.at-a.at <= time.Minute {
				worst = max(worst, b.n-a.n)
			}
		}
		if reached5 < 0 && a.n >= 5 {
			reached5 = a.at
		}
		if reached9 < 0 && a.n >= 9 {
			reached9 = a.at
		}
	}
	last := samples[len(samples)-1]
	t.Logf("SCALE-UP LIMIT 4/60s: 5 replicas at %.1f s, 9 at %.1f s, %d at %.0f s; most growth in any 60 s window %d", reached5.Seconds(), reached9.Seconds(), last.n, last.at.Seconds(), worst)
	if worst > 4 {
		t.Errorf("grew by %d within 60 s, want at most 4", worst)
	}
	if reached5 < 0 || reached5 > 5*time.Second {
		t.Errorf("5 replicas at %s, want within 5 s of the burst", reached5)
	}
	if reached9 < 0 || reached9 > 70*time.Second {
		t.Errorf("9 replicas at %s, want within 70 s of the burst", reached9)
	}
}

// Scenario 8: a multi-container remainder is packed by the sum of its
// containers' requests: 300m + 200m on a 2-CPU node fits 4, none Pending.
func TestMultiContainerCapacity(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "2", Memory: "8Gi"}}})
	create(t, s, deployment("default", "background", 0, map[string]string{"microscaling.com/rule": "remainder",
		"microscaling.com/max-replicas": "20"}, "300m", "200m"))
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "background", 15*time.Second, "4", func(n int32) bool { return n == 4 })
	assertNoPending(t, s, "background")
	waitEvent(t, s, "default", "background", "0 -> 4", 5*time.Second)
}

// Scenario 9: --dry-run writes nothing and still emits the Events.
func TestDryRun(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "10")))
	startController(t, s.Kubeconfig, "--dry-run")
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, "default", "consumer", "ScaledDryRun", 10*time.Second)
	d := mustDeployment(t, s, "default", "consumer")
	if *d.Spec.Replicas != 1 || d.Generation != 1 {
		t.Errorf("dry run wrote: replicas %d, generation %d", *d.Spec.Replicas, d.Generation)
	}
}

// A remainder is packed by what the scheduler admits for one of its pods:
// a native sidecar that runs beside a 1 CPU init container, and the 50m
// overhead its RuntimeClass adds. 100m + 300m sidecar, 1 CPU init, 50m
// overhead = 1350m a pod: two fit a 3-CPU node, four the cluster, none
// Pending (counting the containers alone would ask for 20).
func TestRemainderPackedByAdmittedRequests(t *testing.T) {
	s := harness.StartT(t, harness.Options{Nodes: []harness.Node{{Name: "n1", CPU: "3", Memory: "8Gi"}, {Name: "n2", CPU: "3", Memory: "8Gi"}}})
	rc := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "sandboxed"}, Handler: "sandboxed",
		Overhead: &nodev1.Overhead{PodFixed: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m")}}}
	if _, err := s.Client.NodeV1().RuntimeClasses().Create(t.Context(), rc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := deployment("default", "background", 0, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "20"}, "100m")
	always := corev1.ContainerRestartPolicyAlways
	d.Spec.Template.Spec.RuntimeClassName = &rc.Name
	d.Spec.Template.Spec.InitContainers = []corev1.Container{
		{Name: "proxy", Image: "example.com/proxy:1", RestartPolicy: &always, Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("300m")}}},
		{Name: "setup", Image: "example.com/setup:1", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}},
	}
	create(t, s, d)
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "background", 15*time.Second, "4", func(n int32) bool { return n == 4 })
	assertNoPending(t, s, "background")
	pods, err := s.Client.CoreV1().Pods("default").List(t.Context(), metav1.ListOptions{LabelSelector: "app=background"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if got := p.Spec.Overhead.Cpu().MilliValue(); got != 50 {
			t.Errorf("pod %s carries %dm overhead, want the RuntimeClass's 50m", p.Name, got)
		}
	}
	var scaled []string
	for _, e := range mustEvents(t, s, "default", "background") {
		if strings.HasPrefix(e, "Normal Scaled: ") {
			scaled = append(scaled, e)
		}
	}
	if len(scaled) != 1 || !strings.Contains(scaled[0], "0 -> 4") {
		t.Errorf("microscaling's events %q, want one Scaled 0 -> 4", scaled)
	}
}
