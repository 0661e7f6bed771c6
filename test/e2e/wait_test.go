package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestWaitTarget: a consumer with only microscaling.com/target-wait (5 s)
// gets a burst, then a steady 50 msg/s it cannot serve alone (10 msg/s per
// replica, 5 in flight). Its consumers measure each stamped message's wait;
// once the controller has sized for the load, 95% of messages wait less
// than the target, on no more than twice the replicas the load needs.
func TestWaitTarget(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-wait", "5s", "min-replicas", "1", "max-replicas", "30"), "10m"))
	startController(t, s.Kubeconfig)
	waits := &workload.Waits{}
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond, MaxInFlight: 5, Waits: waits})
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 300); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := workload.Produce(ctx, s.NSQ.TCPAddr, "jobs", workload.Schedule{Min: 50, Max: 50}); err != nil {
			t.Errorf("producing: %v", err)
		}
	})
	waitReplicas(t, s, "default", "consumer", 20*time.Second, "at least 5 (50/s at 10/s)", func(n int32) bool { return n >= 5 })
	// Once the burst is served, count only what follows.
	eventually(t, 30*time.Second, func(context.Context) error {
		if _, n := waits.Quantile(0.5); n < 1000 {
			return fmt.Errorf("%d messages handled so far", n)
		}
		return nil
	})
	waits.Reset()
	wg.Wait()
	p95, n := waits.Quantile(0.95)
	if n < 500 {
		t.Fatalf("only %d messages handled once sized", n)
	}
	if p95 > 5*time.Second {
		t.Errorf("p95 wait %v over %d messages, want under the 5s target", p95, n)
	}
	r, err := replicas(t.Context(), s, "default", "consumer")
	if err != nil {
		t.Fatal(err)
	}
	if r > 12 {
		t.Errorf("%d replicas for a load that needs 5-6", r)
	}
	t.Logf("p95 wait %v over %d messages at %d replicas", p95, n, r)
}
