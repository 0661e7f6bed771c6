package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// guard fails the test if ok(replicas) is ever false while it runs; stop
// ends it and returns how many samples it took.
func guard(t *testing.T, s *harness.Stack, ns, name, what string, ok func(int32) bool) (stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var samples atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				samples.Add(1)
				if !ok(*d.Spec.Replicas) {
					t.Errorf("%s: %d replicas, want %s", name, *d.Spec.Replicas, what)
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond): // sampling period
			}
		}
	}()
	return func() int { cancel(); <-done; return int(samples.Load()) }
}

// An nsqd that answers after the timeout, or with garbage, holds its members
// and is reported; a healthy group keeps scaling meanwhile.
func TestSlowAndGarbageNSQD(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		w.Write([]byte(`{"topics":[]}`))
	}))
	defer slow.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`<html>502 Bad Gateway</html>`))
	}))
	defer garbage.Close()
	for name, srv := range map[string]*httptest.Server{"slow": slow, "garbage": garbage} {
		create(t, s, deployment("default", name, 3, map[string]string{
			"microscaling.com/queue":               "nsq://" + strings.TrimPrefix(srv.URL, "http://") + "/jobs/work",
			"microscaling.com/target-queue-length": "10", "microscaling.com/min-replicas": "1", "microscaling.com/max-replicas": "10",
			"microscaling.com/scale-down-delay": "0s"}))
	}
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "healthy", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "10")))
	stopSlow := guard(t, s, "default", "slow", "3 (held)", func(n int32) bool { return n == 3 })
	stopGarbage := guard(t, s, "default", "garbage", "3 (held)", func(n int32) bool { return n == 3 })
	c := startController(t, s.Kubeconfig, "--queue-timeout=300ms")
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "healthy", 15*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	waitEvent(t, s, "default", "slow", "Warning QueueUnreadable", 10*time.Second)
	waitEvent(t, s, "default", "slow", "timeout", time.Second)
	waitEvent(t, s, "default", "garbage", "Warning QueueUnreadable", 10*time.Second)
	waitEvent(t, s, "default", "garbage", "malformed answer", time.Second)
	// The tenant's Event carries no byte of what the endpoint answered.
	if evs, err := events(t.Context(), s, "default", "garbage"); err != nil || strings.Contains(strings.Join(evs, "|"), "Bad Gateway") {
		t.Errorf("events of garbage %q (%v) echo the answer", evs, err)
	}
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		n, err := c.metric(ctx, "microscaling_queue_read_errors_total")
		if err != nil || n < 10 {
			return fmt.Errorf("%v read errors counted (%v)", n, err)
		}
		return nil
	})
	if n := stopSlow() + stopGarbage(); n < 20 {
		t.Errorf("only %d samples of the held Deployments", n)
	}
}

// kube-apiserver and then etcd restart under load: nothing is lost, no
// spurious scale-down, and decisions resume.
func TestControlPlaneRestarts(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "6", "scale-down-delay", "0s")))
	startController(t, s.Kubeconfig)
	// No consumers: the backlog stays, so the only right answer is max.
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 15*time.Second, "6", func(n int32) bool { return n == 6 })
	stop := guard(t, s, "default", "consumer", "6 throughout", func(n int32) bool { return n == 6 })
	if err := s.RestartAPIServer(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.RestartEtcd(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Back on its feet, the controller still decides: let the queue drain.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		_, err := s.Client.AppsV1().Deployments("default").Get(ctx, "consumer", metav1.GetOptions{})
		return err
	})
	stop()
	consumers(t, s, "default", "consumer", "jobs", "work", time.Millisecond)
	waitReplicas(t, s, "default", "consumer", 60*time.Second, "1 (min) once drained", func(n int32) bool { return n == 1 })
}

// A person runs kubectl scale on a managed Deployment: the controller says
// so in an Event and decides again from there; a paused one is left alone.
func TestKubectlScale(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "managed", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "10", "scale-down-delay", "0s")))
	create(t, s, deployment("default", "paused", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "10", "paused", "true")))
	c := startController(t, s.Kubeconfig)
	// A first write makes the controller the owner of the count.
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 30); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "managed", 10*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	emptyTopic(t, s, "jobs", "work")
	waitReplicas(t, s, "default", "managed", 10*time.Second, "1", func(n int32) bool { return n == 1 })
	for _, name := range []string{"managed", "paused"} {
		if _, err := s.Kubectl(t.Context(), "scale", "deployment/"+name, "--replicas=5"); err != nil {
			t.Fatal(err)
		}
	}
	waitEvent(t, s, "default", "managed", "ExternalScale", 10*time.Second)
	waitReplicas(t, s, "default", "managed", 10*time.Second, "1 (corrected: the queue is empty)", func(n int32) bool { return n == 1 })
	ticks := mustMetric(t, c, "microscaling_tick_duration_seconds_count")
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		now, err := c.metric(ctx, "microscaling_tick_duration_seconds_count")
		if err != nil || now < ticks+3 {
			return fmt.Errorf("%v ticks", now)
		}
		return nil
	})
	if n := mustReplicas(t, s, "default", "paused"); n != 5 {
		t.Errorf("paused Deployment changed to %d after kubectl scale to 5", n)
	}
}

// Changes while groups are being decided: a deleted member, a member moved
// to another group, a lowered max: each takes effect on the next tick with no
// error Events.
func TestChangesMidDecision(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "2", Memory: "8Gi"}}})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "group", "g1",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "10"), "200m"))
	create(t, s, deployment("default", "bg", 0, map[string]string{"microscaling.com/group": "g1",
		"microscaling.com/rule": "remainder", "microscaling.com/priority": "2", "microscaling.com/max-replicas": "20"}, "200m"))
	create(t, s, deployment("default", "doomed", 0, map[string]string{"microscaling.com/group": "g1",
		"microscaling.com/rule": "remainder", "microscaling.com/priority": "3", "microscaling.com/max-replicas": "20"}, "200m"))
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "bg", 15*time.Second, "9", func(n int32) bool { return n == 9 })
	// Delete a member: the group goes on.
	if err := s.Client.AppsV1().Deployments("default").Delete(t.Context(), "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Move bg to its own group with a budget of 3: it leaves g1 and obeys the budget.
	patch := `{"metadata":{"annotations":{"microscaling.com/group":"g2","microscaling.com/group-max-replicas":"3"}}}`
	if _, err := s.Client.AppsV1().Deployments("default").Patch(t.Context(), "bg", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "bg", 10*time.Second, "3 (g2's budget)", func(n int32) bool { return n == 3 })
	// Lower the consumer's max below what a backlog asks for.
	patch = `{"metadata":{"annotations":{"microscaling.com/max-replicas":"2"}}}`
	if _, err := s.Client.AppsV1().Deployments("default").Patch(t.Context(), "consumer", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "2 (the new max)", func(n int32) bool { return n == 2 })
	stop := guard(t, s, "default", "consumer", "at most 2", func(n int32) bool { return n <= 2 })
	time.Sleep(3 * time.Second) // three more ticks under the guard
	stop()
	for _, name := range []string{"consumer", "bg"} {
		evs := mustEvents(t, s, "default", name)
		for _, e := range evs {
			if strings.HasPrefix(e, "Warning") {
				t.Errorf("%s: %s", name, e)
			}
		}
	}
}

// A Deployment in namespace b naming namespace a's group neither joins it
// nor takes its budget.
func TestGroupsNeverCrossNamespaces(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	for _, ns := range []string{"a", "b"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	ensureChannel(t, s, "jobs", "work")
	budget := map[string]string{"microscaling.com/group": "shared", "microscaling.com/group-max-replicas": "4"}
	ca := queueAnn(s, "jobs", "work", "target-queue-length", "10", "min-replicas", "1", "max-replicas", "10")
	for k, v := range budget {
		ca[k] = v
	}
	create(t, s, deployment("a", "consumer", 1, ca))
	create(t, s, deployment("a", "bg", 0, map[string]string{"microscaling.com/group": "shared", "microscaling.com/group-max-replicas": "4",
		"microscaling.com/rule": "remainder", "microscaling.com/priority": "2", "microscaling.com/max-replicas": "20"}))
	create(t, s, deployment("b", "intruder", 0, map[string]string{"microscaling.com/group": "shared",
		"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "7"}))
	startController(t, s.Kubeconfig)
	get := func(ns, name string) int32 {
		d, err := s.Client.AppsV1().Deployments(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return *d.Spec.Replicas
	}
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		if a, b := get("a", "consumer")+get("a", "bg"), get("b", "intruder"); a != 4 || b != 7 {
			return fmt.Errorf("group a/shared has %d (want its budget 4), b/shared has %d (want its own max 7)", a, b)
		}
		return nil
	})
}
