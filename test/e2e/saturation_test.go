package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestSaturation: real go-nsq consumers that share one downstream limited
// to 40 messages a second (each takes 100 ms a message: 10/s alone, so 4
// reach the limit), 80/s arriving. The consumer stops within 1.5x of that
// knee instead of running to max-replicas (20), says so once with the
// measured ceiling, and the group's remainder keeps the room; once the
// limit is lifted, a probe finds more throughput and the consumer grows
// past the knee to what the load needs.
func TestSaturation(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "5", Memory: "16Gi"}}})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "group", "shop", "priority", "1",
		"target-queue-length", "50", "min-replicas", "1", "max-replicas", "20", "scale-down-delay", "30s"), "200m"))
	create(t, s, deployment("default", "background", 0, map[string]string{"microscaling.com/group": "shop",
		"microscaling.com/priority": "2", "microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "40"}, "200m"))
	downstream := rate.NewLimiter(40, 1)
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond, MaxInFlight: 1, Downstream: downstream})
	startController(t, s.Kubeconfig)
	ctx, stop := context.WithCancel(t.Context())
	produced := make(chan error, 1)
	go func() {
		produced <- workload.ProduceRate(ctx, s.NSQ.TCPAddr, "jobs", func(time.Duration) float64 { return 80 })
	}()
	t.Cleanup(func() {
		stop()
		if err := <-produced; err != nil {
			t.Errorf("producer: %v", err)
		}
	})
	start := time.Now()
	waitEvent(t, s, "default", "consumer", "Warning ThroughputSaturated", 3*time.Minute)
	told := time.Since(start)
	evs, err := events(t.Context(), s, "default", "consumer")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SATURATION: told %.0f s after the load started: %q", told.Seconds(), evs)

	// Settled within 1.5x of the knee, and held there (the hold, 2
	// minutes, outlasts this window: no probe yet); the remainder has the
	// room the consumer does not take.
	waitReplicas(t, s, "default", "consumer", 40*time.Second, "at most 6 (1.5x the knee, 4)", func(n int32) bool { return n <= 6 })
	peak, lowRemainder := int32(0), int32(1<<30)
	wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	every(wctx, time.Second, func(int) bool {
		n, err := replicas(t.Context(), s, "default", "consumer")
		r, rerr := replicas(t.Context(), s, "default", "background")
		if err != nil || rerr != nil {
			t.Errorf("replicas: %v %v", err, rerr)
			return false
		}
		peak, lowRemainder = max(peak, n), min(lowRemainder, r)
		return true
	})
	cancel()
	t.Logf("SATURATION: consumer at most %d replicas over 30 s, remainder at least %d", peak, lowRemainder)
	if peak > 6 || peak < 3 {
		t.Errorf("saturated consumer: up to %d replicas over 30 s; want 3 to 6 (knee 4)", peak)
	}
	if lowRemainder < 15 {
		t.Errorf("the remainder had %d replicas; want at least 15 of the node's 25 pods of room (the consumer takes at most 6)", lowRemainder)
	}
	n, err := eventCount(t.Context(), s, "consumer", "ThroughputSaturated")
	if err != nil || n != 1 {
		t.Errorf("ThroughputSaturated Events: %d (%v), want 1: told once", n, err)
	}

	// The limit lifted: within the hold and a probe, more replicas deliver
	// more, and the consumer grows to what 80/s needs at 10/s (8 or more).
	downstream.SetLimit(rate.Inf)
	lifted := time.Now()
	waitReplicas(t, s, "default", "consumer", 3*time.Minute, "8 or more (80/s at 10/s a replica)", func(n int32) bool { return n >= 8 })
	t.Logf("SATURATION: grew past the knee %.0f s after the limit was lifted", time.Since(lifted).Seconds())
	waitEvent(t, s, "default", "consumer", "Normal ThroughputRecovered", 10*time.Second)
}

// eventCount counts the Events of reason on the Deployment name in
// default, by their count field (a repeated Event is one object).
func eventCount(ctx context.Context, s *harness.Stack, name, reason string) (int32, error) {
	list, err := s.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.name": name, "involvedObject.kind": "Deployment", "reason": reason}.String()})
	if err != nil {
		return 0, fmt.Errorf("listing %s Events of %s: %w", reason, name, err)
	}
	var n int32
	for _, e := range list.Items {
		n += max(e.Count, 1)
	}
	return n, nil
}
