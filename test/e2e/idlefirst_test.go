package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestIdleFirstScaleDown: the same work reaches two consumers of 10
// replicas each, one scaled by a controller with --idle-first (run as the
// identity manifests/idle-first installs) and one by a controller without
// it, each watching its own namespace (the topic has a channel for each).
// Each cycle, messages trickle in for a while (one every 1.5 s, each 6 s
// of work: about 4 of the 10 consumers busy, which ones rotating), then
// stop, and each may go down to 4. A consumer whose pod goes is killed:
// what it holds is delivered again (nsqd's requeue count). Without
// idle-first the ReplicaSet controller removes whichever pods it ranks
// first, busy ones among them; with it, the idle ones. Over the cycles
// idle-first redelivers at most a tenth of what the other does, the pods
// carry the deletion costs it wrote, and the policy lets its identity
// change nothing else on a pod.
func TestIdleFirstScaleDown(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	const (
		topic  = "trickle"
		high   = 10
		low    = 4
		every  = 1500 * time.Millisecond
		work   = 6 * time.Second
		cycles = 5
	)
	sides := []string{"plain", "idle"}
	for _, ns := range sides {
		if _, err := s.Client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ensureChannel(t, s, topic, ns)
		create(t, s, deployment(ns, "consumer", high, queueAnn(s, topic, ns,
			"target-queue-length", "10", "min-replicas", strconv.Itoa(high), "max-replicas", strconv.Itoa(high), "scale-down-delay", "0s")))
		runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: ns, Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
			Topic: topic, Channel: ns, PerMessage: work, MaxInFlight: 1, Kill: true})
	}
	if out, err := s.Kubectl(t.Context(), "apply", "-k", filepath.Join("..", "..", "manifests", "idle-first")); err != nil {
		t.Fatalf("kubectl apply -k manifests/idle-first: %v\n%s", err, out)
	}
	kc, err := s.ServiceAccountKubeconfig("microscaling-system", "microscaling")
	if err != nil {
		t.Fatal(err)
	}
	startController(t, s.Kubeconfig, "-n", "plain")
	startController(t, kc, "-n", "idle", "--idle-first")

	setMin := func(n int) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"microscaling.com/min-replicas":%q}}}`, strconv.Itoa(n))
		for _, ns := range sides {
			if _, err := s.Client.AppsV1().Deployments(ns).Patch(t.Context(), "consumer", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// settled waits until, on both sides, as many pods run as spec.replicas
	// asks for (want, when not 0), each with its consumer connected, and
	// no message is left.
	settled := func(what string, want int32, timeout time.Duration) {
		t.Helper()
		eventually(t, timeout, func(ctx context.Context) error {
			for _, ns := range sides {
				r, err := replicas(ctx, s, ns, "consumer")
				if err != nil {
					return err
				}
				pods, err := s.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=consumer"})
				if err != nil {
					return err
				}
				running := int32(0)
				for _, p := range pods.Items {
					if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
						running++
					}
				}
				backlog, err := s.NSQ.Backlog(ctx, topic, ns)
				if err != nil {
					return err
				}
				clients, err := s.NSQ.Clients(ctx, topic, ns)
				if err != nil {
					return err
				}
				if (want != 0 && r != want) || running != r || int32(clients) != r || backlog != 0 {
					return fmt.Errorf("%s: %s wants %d replicas, has %d pods running, %d consumers and %d messages; want %d replicas, all running and connected, no message",
						what, ns, r, running, clients, backlog, want)
				}
			}
			return nil
		})
	}
	redelivered := map[string]int64{}
	for cycle := range cycles {
		settled(fmt.Sprintf("cycle %d, before the trickle", cycle), high, 90*time.Second)
		// 12 to 21 messages: which consumers hold the last ones turns
		// with the count (nsqd hands a message to the consumer that has
		// waited longest).
		n := 12 + (cycle*7)%10
		for i := range n {
			if i > 0 {
				time.Sleep(every) // the trickle's pace: the load itself
			}
			if err := workload.Publish(s.NSQ.TCPAddr, topic, 1); err != nil {
				t.Fatal(err)
			}
		}
		setMin(low)
		for _, ns := range sides {
			waitReplicas(t, s, ns, "consumer", 20*time.Second, "fewer than "+strconv.Itoa(high), func(n int32) bool { return n < high })
		}
		// What the removed consumers held is redelivered and done.
		settled(fmt.Sprintf("cycle %d, after the scale-down", cycle), 0, 3*work+30*time.Second)
		for _, ns := range sides {
			got, err := s.NSQ.Redelivered(t.Context(), topic, ns)
			if err != nil {
				t.Fatal(err)
			}
			r := mustReplicas(t, s, ns, "consumer")
			t.Logf("cycle %d (%d messages): %s down to %d, %d redelivered so far", cycle, n, ns, r, got)
			redelivered[ns] = got
		}
		setMin(high)
	}
	t.Logf("IDLE-FIRST redelivered over %d scale-downs from %d, about 4 of %d busy: without idle-first %d, with it %d",
		cycles, high, high, redelivered["plain"], redelivered["idle"])
	// About 2 of the 4 busy go on each cycle without it (6 of 10 removed):
	// fewer than 3 in all would mean the cycles never removed busy ones.
	if redelivered["plain"] < 3 {
		t.Errorf("without idle-first only %d redelivered over %d cycles: the test did not remove busy consumers", redelivered["plain"], cycles)
	}
	if redelivered["idle"]*10 > redelivered["plain"] {
		t.Errorf("idle-first redelivered %d, more than a tenth of the %d without it", redelivered["idle"], redelivered["plain"])
	}
	// The costs are on the pods, written by the idle-first controller only.
	for _, ns := range sides {
		pods, err := s.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=consumer"})
		if err != nil {
			t.Fatal(err)
		}
		marked := 0
		for _, p := range pods.Items {
			if _, ok := p.Annotations[corev1.PodDeletionCost]; ok {
				marked++
			}
		}
		if (ns == "idle") != (marked > 0) {
			t.Errorf("%s: %d of %d pods carry %s", ns, marked, len(pods.Items), corev1.PodDeletionCost)
		}
	}

	// The policy lets that identity change only the deletion cost of a pod.
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := s.Client.CoreV1().Pods("idle").List(t.Context(), metav1.ListOptions{LabelSelector: "app=consumer"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods of idle/consumer: %v (%d)", err, len(pods.Items))
	}
	pod := pods.Items[0].Name
	for _, tc := range []struct {
		patch   string
		allowed bool
	}{
		{`{"metadata":{"labels":{"app":"elsewhere"}}}`, false},
		{`{"metadata":{"annotations":{"team":"x"}}}`, false},
		{`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"7","team":"x"}}}`, false},
		{`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"7"}}}`, true},
	} {
		_, err := as.CoreV1().Pods("idle").Patch(t.Context(), pod, types.MergePatchType, []byte(tc.patch), metav1.PatchOptions{})
		switch {
		case tc.allowed && err != nil:
			t.Errorf("patch %s as the controller: %v", tc.patch, err)
		case !tc.allowed && (err == nil || !strings.Contains(err.Error(), "may change only controller.kubernetes.io/pod-deletion-cost")):
			t.Errorf("patch %s as the controller: %v, want refused by the policy", tc.patch, err)
		}
	}
}
