package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// With kube-controller-manager's HPA controller running, an HPA that
// targets a managed Deployment takes it over: microscaling leaves it alone
// (one Warning naming the HPA, a gauge) and neither side flaps; when the HPA
// is deleted, microscaling says so and scales it again.
func TestHPACoexistence(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "min-replicas", "1", "max-replicas", "10")))
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	c := startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "consumer", 15*time.Second, "more than 3", func(n int32) bool { return n > 3 })

	three := int32(3)
	util := int32(50)
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "keda-hpa-consumer", Namespace: "default"},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "consumer"},
			MinReplicas:    &three, MaxReplicas: three,
			Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricSource{
				Name: "cpu", Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: &util}}}},
		},
	}
	hpas := s.Client.AutoscalingV2().HorizontalPodAutoscalers("default")
	if _, err := hpas.Create(t.Context(), hpa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, "default", "consumer", "Warning ConflictingAutoscaler: left alone: HorizontalPodAutoscaler keda-hpa-consumer", 10*time.Second)
	if g := mustMetric(t, c, "microscaling_conflicting_autoscaler", `deployment="consumer"`); g != 1 {
		t.Errorf("microscaling_conflicting_autoscaler = %v, want 1", g)
	}
	// The HPA controller (15 s sync) brings it to its max of 3.
	waitReplicas(t, s, "default", "consumer", 40*time.Second, "3 (the HPA's)", func(n int32) bool { return n == 3 })
	scaledBefore := countEvents(t, s, "consumer", "Normal Scaled: ")
	// Neither side flaps: sampled every half second for 20 s, it stays at 3.
	var history []int32
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); <-ticker.C {
		history = append(history, mustReplicas(t, s, "default", "consumer"))
	}
	for _, n := range history {
		if n != 3 {
			t.Fatalf("replicas sampled under the HPA: %v, want 3 throughout", history)
		}
	}
	if n := countEvents(t, s, "consumer", "Warning ConflictingAutoscaler"); n != 1 {
		t.Errorf("%d ConflictingAutoscaler Events, want 1", n)
	}
	if n := countEvents(t, s, "consumer", "Normal Scaled: "); n != scaledBefore {
		t.Errorf("microscaling scaled %d times while the HPA held the Deployment", n-scaledBefore)
	}

	if err := hpas.Delete(t.Context(), hpa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, "default", "consumer", "Normal AutoscalerGone", 10*time.Second)
	waitReplicas(t, s, "default", "consumer", 15*time.Second, "more than 3 again", func(n int32) bool { return n > 3 })
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		g, err := c.metric(ctx, "microscaling_conflicting_autoscaler", `deployment="consumer"`)
		if err != nil {
			return err
		}
		if g != 0 {
			return fmt.Errorf("microscaling_conflicting_autoscaler = %v after the HPA went", g)
		}
		return nil
	})
}

// countEvents counts a default-namespace Deployment's Events that start with prefix.
func countEvents(t *testing.T, s *harness.Stack, name, prefix string) int {
	t.Helper()
	n := 0
	for _, e := range mustEvents(t, s, "default", name) {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}
