package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestDemoRisingLoadNoReversal drives the demo's own schedule (5 to 80
// msg/s over a 4-minute period, one consumer per Running pod at 100 ms a
// message) through its rising half on the real stack, with the demo's
// manifests, and counts the consumer's reversals: a scale-down taken back
// by a scale-up while the producer's rate only rises. It must have none,
// and the consumer must have grown with the load.
func TestDemoRisingLoadNoReversal(t *testing.T) {
	nodes := []harness.Node{{Name: "node-1", CPU: "2", Memory: "8Gi"}, {Name: "node-2", CPU: "2", Memory: "8Gi"}, {Name: "node-3", CPU: "2", Memory: "8Gi"}}
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: nodes})
	installDemo(t, s)
	startController(t, s.Kubeconfig, "--namespace=demo")
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "demo", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond})

	schedule := workload.Schedule{Min: 5, Max: 80, Period: 4 * time.Minute}
	ctx, cancel := context.WithTimeout(t.Context(), schedule.Period/2)
	defer cancel()
	// The replicas are sampled until the producer is done, on a context of
	// their own: a read cut by the producer's deadline is not an error.
	rec, stop := context.WithCancel(t.Context())
	defer stop()
	var wg sync.WaitGroup
	var history []int32
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			n, err := demoReplicas(rec, s, "consumer")
			if rec.Err() != nil {
				return
			}
			if err != nil {
				t.Errorf("reading the consumer's replicas: %v", err)
				return
			}
			if len(history) == 0 || history[len(history)-1] != n {
				history = append(history, n)
				t.Logf("consumer replicas %d", n)
			}
			select {
			case <-rec.Done():
				return
			case <-tick.C:
			}
		}
	})
	err := workload.Produce(ctx, s.NSQ.TCPAddr, "jobs", schedule)
	stop()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	reversals, lastDown := 0, false
	for i := 1; i < len(history); i++ {
		switch {
		case history[i] < history[i-1]:
			lastDown = true
		case lastDown:
			reversals++
			lastDown = false
		}
	}
	if reversals > 0 {
		t.Errorf("%d reversals while the rate only rose: replicas went %v", reversals, history)
	}
	// 80/s at 10/s per replica needs 8 at the top; the rule's lag allows one less.
	if top := history[len(history)-1]; top < 7 {
		t.Errorf("consumer at %d replicas at the top of the rise (80/s needs 8): %v", top, history)
	}
}
