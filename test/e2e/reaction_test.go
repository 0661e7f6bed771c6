package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestReactionTime measures, at the default 1 s interval, the time from the
// backlog crossing its target to the /scale write being visible on a watch.
// It is a benchmark, not a pass/fail check: run it with
// MICROSCALING_BENCH=1 (make bench-reaction) and copy the figures to
// BENCHMARKS.md.
func TestReactionTime(t *testing.T) {
	if os.Getenv("MICROSCALING_BENCH") == "" {
		t.Skip("benchmark: set MICROSCALING_BENCH=1")
	}
	trials := 25
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "50", "min-replicas", "1", "max-replicas", "10", "scale-down-delay", "0s")))
	startController(t, s.Kubeconfig)
	var got []time.Duration
	for range trials {
		emptyTopic(t, s, "jobs", "work")
		waitReplicas(t, s, "default", "consumer", 10*time.Second, "1", func(n int32) bool { return n == 1 })
		took := reaction(t, s, "default", "consumer", 1, "jobs", 60)
		got = append(got, took)
	}
	slices.Sort(got)
	p := func(q float64) time.Duration { return got[min(len(got)-1, int(q*float64(len(got))))] }
	t.Logf("reaction time over %d trials: median %s, p90 %s, worst %s",
		len(got), p(0.5).Round(time.Millisecond), p(0.9).Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond))
	fmt.Printf("REACTION trials=%d median=%s p90=%s worst=%s all=%v\n", len(got), p(0.5).Round(time.Millisecond),
		p(0.9).Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond), got)
}

// reaction publishes n messages to topic at a random phase against the
// controller's tick and returns how long until a watch sees the Deployment
// asked for more than from replicas.
func reaction(t *testing.T, s *harness.Stack, ns, name string, from int32, topic string, n int) time.Duration {
	t.Helper()
	// List, then watch from the list's resourceVersion: the Deployment's own
	// may be older than the watch cache keeps (410 Gone) after much churn.
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	list, err := s.Client.AppsV1().Deployments(ns).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Client.AppsV1().Deployments(ns).Watch(t.Context(), metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond) // a random phase against the tick
	sent := time.Now()
	if err := workload.Publish(s.NSQ.TCPAddr, topic, n); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("%s/%s: watch closed before a scale-up", ns, name)
			}
			if ev.Type == watch.Error {
				t.Fatalf("%s/%s: watch: %v", ns, name, apierrors.FromObject(ev.Object))
			}
			if dd, ok := ev.Object.(*appsv1.Deployment); ok && *dd.Spec.Replicas > from {
				return time.Since(sent)
			}
		case <-timeout:
			t.Fatalf("%s/%s: no scale-up within 30 s", ns, name)
		}
	}
}
