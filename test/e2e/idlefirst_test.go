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

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestIdleFirstScaleDown: the same work reaches two consumers of 10
// replicas each, one scaled by a controller with --idle-first and one by
// a controller without it (each watching its own namespace; the topic has
// a channel for each). A batch of 4 long messages arrives, so that 4 of
// each's 10 consumers are busy and 6 idle, and then each may go down to 4.
// A consumer whose pod goes is killed: what it holds is delivered again
// (nsqd's requeue count). Without idle-first the ReplicaSet controller
// removes whichever pods it ranks first (the newest) and busy ones among
// them; with it, the idle ones. Over several cycles, idle-first redelivers
// at most a tenth of what the other does (here none), and the pods carry
// the deletion cost the controller wrote.
func TestIdleFirstScaleDown(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	const (
		topic  = "batches"
		high   = 10
		low    = 4
		batch  = 4
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
	// The idle-first side runs as the identity manifests/idle-first
	// installs: its RBAC and policy let the marks through.
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
	// channels waits until, on both sides, the channel holds want messages
	// in flight and none waiting, and n pods run.
	settled := func(what string, n int32, inFlight int64, timeout time.Duration) {
		t.Helper()
		eventually(t, timeout, func(ctx context.Context) error {
			for _, ns := range sides {
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
				if running != n || backlog != inFlight {
					return fmt.Errorf("%s: %s has %d pods running and %d messages, want %d and %d", what, ns, running, backlog, n, inFlight)
				}
			}
			return nil
		})
	}
	redelivered := map[string]int64{}
	for cycle := range cycles {
		settled(fmt.Sprintf("cycle %d, before the batch", cycle), high, 0, 90*time.Second)
		// Every consumer connected (a pod Running takes a moment to have one).
		eventually(t, 30*time.Second, func(ctx context.Context) error {
			return connected(ctx, s, topic, sides, high)
		})
		if err := workload.Publish(s.NSQ.TCPAddr, topic, batch); err != nil {
			t.Fatal(err)
		}
		// Each side's 4 messages taken, by 4 consumers (one each at most).
		eventually(t, 10*time.Second, func(ctx context.Context) error {
			return inFlight(ctx, s, topic, sides, batch)
		})
		setMin(low)
		for _, ns := range sides {
			waitReplicas(t, s, ns, "consumer", 20*time.Second, strconv.Itoa(low), func(n int32) bool { return n == low })
		}
		// What the removed consumers held is redelivered and done; the
		// batch is finished before the next one.
		settled(fmt.Sprintf("cycle %d, after the scale-down", cycle), low, 0, 3*work+30*time.Second)
		for _, ns := range sides {
			n, err := s.NSQ.Redelivered(t.Context(), topic, ns)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("cycle %d: %s has redelivered %d in all", cycle, ns, n)
			redelivered[ns] = n
		}
		setMin(high)
	}
	t.Logf("redelivered over %d scale-downs of %d -> %d with %d of %d busy: without idle-first %d, with it %d",
		cycles, high, low, batch, high, redelivered["plain"], redelivered["idle"])
	if redelivered["plain"] < cycles {
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
	pods, err := s.Client.CoreV1().Pods("idle").List(t.Context(), metav1.ListOptions{LabelSelector: "app=consumer"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods of idle/consumer: %v (%d)", err, len(pods.Items))
	}
	pod := pods.Items[0].Name
	as := "--as=system:serviceaccount:microscaling-system:microscaling"
	for _, tc := range []struct{ patch, want string }{
		{`{"metadata":{"labels":{"app":"elsewhere"}}}`, "may change only controller.kubernetes.io/pod-deletion-cost"},
		{`{"metadata":{"annotations":{"team":"x"}}}`, "may change only controller.kubernetes.io/pod-deletion-cost"},
		{`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"lots"}}}`, "may change only controller.kubernetes.io/pod-deletion-cost"},
		{`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"7"}}}`, ""},
	} {
		out, err := s.Kubectl(t.Context(), as, "-n", "idle", "patch", "pod", pod, "--type=merge", "-p", tc.patch)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("patch %s as the controller: %v\n%s", tc.patch, err, out)
		case tc.want != "" && (err == nil || !strings.Contains(out+err.Error(), tc.want)):
			t.Errorf("patch %s as the controller: %v\n%s\nwant refused: %s", tc.patch, err, out, tc.want)
		}
	}
}

// connected reports whether each side's channel has n consumers.
func connected(ctx context.Context, s *harness.Stack, topic string, channels []string, n int) error {
	for _, ch := range channels {
		got, err := s.NSQ.Clients(ctx, topic, ch)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("%s has %d consumers connected, want %d", ch, got, n)
		}
	}
	return nil
}

// inFlight reports whether each side's channel has n messages in flight.
func inFlight(ctx context.Context, s *harness.Stack, topic string, channels []string, n int64) error {
	for _, ch := range channels {
		got, err := s.NSQ.InFlight(ctx, topic, ch)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("%s has %d messages in flight, want %d", ch, got, n)
		}
	}
	return nil
}
