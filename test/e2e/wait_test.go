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

// TestSlowStartDoesNotOvershoot: consumers that take 15 s from Running to
// taking messages, 50 msg/s arriving at 10 msg/s a replica (5 needed), for
// a rule holding a backlog target and one holding a wait target. While new
// replicas start, the backlog grows and messages age; the rule counts the
// replicas on the way (it learns their start-up from the first scale-up)
// and does not keep adding more. The 15 s pile up about 600 messages: the
// backlog rule drains them over its 45 s horizon (at most 8 replicas), the
// wait rule sooner (at most 12); without counting the replicas on the way
// the simulator's wait rule went to 19. Status shows the start-up learned.
func TestSlowStartDoesNotOvershoot(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	const warmup = 15 * time.Second
	goals := map[string][]string{"by-backlog": {"target-queue-length", "50"}, "by-wait": {"target-wait", "5s"}}
	consumers := map[string]*workload.Consumers{}
	for name, goal := range goals {
		ensureChannel(t, s, name, "work")
		create(t, s, deployment("default", name, 1, queueAnn(s, name, "work",
			append([]string{"group", name, "min-replicas", "1", "max-replicas", "40"}, goal...)...), "10m"))
		consumers[name] = runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=" + name, NSQDTCPAddr: s.NSQ.TCPAddr,
			Topic: name, Channel: "work", PerMessage: 100 * time.Millisecond, MaxInFlight: 5, Warmup: warmup})
	}
	c := startController(t, s.Kubeconfig)
	eventually(t, 2*warmup, func(context.Context) error {
		for name, cs := range consumers {
			if cs.Count() < 1 {
				return fmt.Errorf("%s: no consumer connected yet", name)
			}
		}
		return nil
	})

	var mu sync.Mutex
	peak := map[string]int32{}
	ctx, cancel := context.WithTimeout(t.Context(), 75*time.Second)
	defer cancel()
	// The samplers stop when the load does (a cancel, not a deadline: the
	// client's rate limiter refuses a wait that would pass a deadline).
	sctx, stop := context.WithCancel(t.Context())
	defer stop()
	var load, wg sync.WaitGroup
	for name := range goals {
		load.Go(func() {
			if err := workload.Produce(ctx, s.NSQ.TCPAddr, name, workload.Schedule{Min: 50, Max: 50}); err != nil {
				t.Errorf("producing on %s: %v", name, err)
			}
		})
		wg.Go(func() {
			ctx := sctx
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				n, err := replicas(ctx, s, "default", name)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					t.Errorf("reading %s: %v", name, err)
					return
				}
				mu.Lock()
				peak[name] = max(peak[name], n)
				mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	load.Wait()
	stop()
	wg.Wait()
	for name, bound := range map[string]int32{"by-backlog": 8, "by-wait": 12} {
		st, err := memberStatus(t.Context(), c, name)
		if err != nil {
			t.Fatal(err)
		}
		learned, err := time.ParseDuration(st.Startup)
		if err != nil {
			t.Errorf("%s: status start-up %q: %v", name, st.Startup, err)
		} else if learned < warmup || learned > warmup+5*time.Second {
			t.Errorf("%s: status says new replicas start in %v, want about %v", name, learned, warmup)
		}
		n, err := replicas(t.Context(), s, "default", name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("SLOWSTART %s: peak %d replicas for 5 needed, %d at the end, start-up learned %s", name, peak[name], n, st.Startup)
		if peak[name] > bound {
			t.Errorf("%s: peaked at %d replicas for a load that needs 5, want at most %d: the replicas on the way were not counted", name, peak[name], bound)
		}
		if n > 8 {
			t.Errorf("%s: %d replicas at the end for a load that needs 5", name, n)
		}
	}
}
