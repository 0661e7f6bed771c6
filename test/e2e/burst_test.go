package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// loadRecord is what a run saw, sampled every 100 ms from the start of the load.
type loadRecord struct {
	mu      sync.Mutex // guards samples
	samples []loadSample
}

type loadSample struct {
	at       time.Duration
	replicas int32 // spec.replicas of the Deployment
	backlog  int64 // depth + in flight + deferred on nsqd
}

// record samples the Deployment's replicas and the channel's backlog until ctx ends.
func (r *loadRecord) record(ctx context.Context, t *testing.T, s *harness.Stack, name, topic, channel string, start time.Time) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := replicas(ctx, s, "default", name)
		b, berr := s.NSQ.Backlog(ctx, topic, channel)
		if ctx.Err() != nil {
			return
		}
		if err != nil || berr != nil {
			t.Errorf("sampling: replicas: %v, backlog: %v", err, berr)
			return
		}
		r.mu.Lock()
		r.samples = append(r.samples, loadSample{at: time.Since(start), replicas: n, backlog: b})
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// burstResult scores one run of the burst + steady load.
type burstResult struct {
	toNeeded       time.Duration // first time spec.replicas >= needed
	peakReplicas   int32
	peakBacklog    int64
	replicaSeconds float64 // spec.replicas integrated over the load
	reversals      int     // a decrease followed by an increase while the load is steady
	waitP95        time.Duration
}

func (r *loadRecord) score(needed int32, load, steadyFrom time.Duration) burstResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := burstResult{toNeeded: -1}
	var lastDir int
	for i, sm := range r.samples {
		if res.toNeeded < 0 && sm.replicas >= needed {
			res.toNeeded = sm.at
		}
		res.peakReplicas = max(res.peakReplicas, sm.replicas)
		res.peakBacklog = max(res.peakBacklog, sm.backlog)
		if i == 0 {
			continue
		}
		prev := r.samples[i-1]
		if prev.at < load {
			res.replicaSeconds += float64(prev.replicas) * (min(sm.at, load) - prev.at).Seconds()
		}
		if sm.replicas != prev.replicas && sm.at >= steadyFrom && sm.at < load {
			dir := 1
			if sm.replicas < prev.replicas {
				dir = -1
			}
			if lastDir == -1 && dir == 1 {
				res.reversals++
			}
			lastDir = dir
		}
	}
	return res
}

// TestBurstBenchmark is the side-by-side shape of issue 15 on the real
// stack: a burst of 1,000 messages, then 100 msg/s for 60 s, consumed by one
// real go-nsq consumer per Running pod at 10 msg/s (max-in-flight 5), so 10
// replicas are needed. It prints time to the needed replicas, peak replicas,
// peak backlog, replica-seconds against the ideal (10 x 60 s) and reversals
// while the load is steady; `make bench-burst` runs it (MICROSCALING_BENCH=1),
// once with target-queue-length 50 and once with only target-wait 5s.
func TestBurstBenchmark(t *testing.T) {
	if os.Getenv("MICROSCALING_BENCH") == "" {
		t.Skip("a benchmark: MICROSCALING_BENCH=1 (make bench-burst)")
	}
	for _, goal := range [][]string{{"target-queue-length", "50"}, {"target-wait", "5s"}} {
		name := goal[0] + "=" + goal[1]
		t.Run(name, func(t *testing.T) { burstBench(t, name, goal) })
	}
}

// burstBench runs the burst + steady load five times with the rule's goal
// annotations and prints each run and the medians.
func burstBench(t *testing.T, name string, goal []string) {
	runs := 5
	if v := os.Getenv("MICROSCALING_BENCH_RUNS"); v != "" {
		if _, err := fmt.Sscan(v, &runs); err != nil || runs < 1 {
			t.Fatalf("MICROSCALING_BENCH_RUNS=%q: want a count of runs", v)
		}
	}
	var results []burstResult
	for i := range runs {
		t.Run(fmt.Sprint("run", i+1), func(t *testing.T) {
			r := burstRun(t, goal)
			results = append(results, r)
			t.Logf("BURST %s run %d: to needed %.1f s, peak replicas %d, peak backlog %d, replica-seconds %.0f (%.2fx ideal 600, %.2fx work content 700), reversals while steady %d, p95 wait %.1f s",
				name, i+1, r.toNeeded.Seconds(), r.peakReplicas, r.peakBacklog, r.replicaSeconds, r.replicaSeconds/600, r.replicaSeconds/700, r.reversals, r.waitP95.Seconds())
		})
	}
	if len(results) == 0 {
		t.Fatal("no run finished")
	}
	med := func(f func(burstResult) float64) float64 {
		v := make([]float64, len(results))
		for i, r := range results {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	rs := med(func(r burstResult) float64 { return r.replicaSeconds })
	t.Logf("BURST %s median of %d: to needed %.1f s, peak replicas %.0f (%.2fx needed 10), peak backlog %.0f, replica-seconds %.0f (%.2fx ideal 600, %.2fx work content 700), reversals while steady %.0f, p95 wait %.1f s",
		name, len(results), med(func(r burstResult) float64 { return r.toNeeded.Seconds() }), med(func(r burstResult) float64 { return float64(r.peakReplicas) }),
		med(func(r burstResult) float64 { return float64(r.peakReplicas) })/10, med(func(r burstResult) float64 { return float64(r.peakBacklog) }),
		rs, rs/600, rs/700, med(func(r burstResult) float64 { return float64(r.reversals) }), med(func(r burstResult) float64 { return r.waitP95.Seconds() }))
}

// burstRun runs the burst + steady load once on a fresh stack, with the
// rule's goal given by the microscaling.com/* annotations in goal, and
// scores it.
func burstRun(t *testing.T, goal []string) burstResult {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	ann := queueAnn(s, "jobs", "work", append([]string{"min-replicas", "0", "max-replicas", "100"}, goal...)...)
	create(t, s, deployment("default", "consumer", 0, ann, "10m"))
	startController(t, s.Kubeconfig)
	waits := &workload.Waits{}
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond, MaxInFlight: 5, Waits: waits})

	const load = 60 * time.Second
	var rec loadRecord
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { rec.record(ctx, t, s, "consumer", "jobs", "work", start) })
	defer func() { cancel(); wg.Wait() }()
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 1000); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(t.Context(), load)
	defer pcancel()
	if err := workload.Produce(pctx, s.NSQ.TCPAddr, "jobs", workload.Schedule{Min: 100, Max: 100}); err != nil {
		t.Fatal(err)
	}
	// Until the backlog the load left is drained, for the waits.
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		b, err := s.NSQ.Backlog(ctx, "jobs", "work")
		if err == nil && b > 0 {
			err = fmt.Errorf("backlog %d", b)
		}
		return err
	})
	cancel()
	wg.Wait()
	for i, sm := range rec.samples {
		if i > 0 && sm.replicas != rec.samples[i-1].replicas && sm.at < 10*time.Second {
			t.Logf("at %.1f s: %d replicas, backlog %d", sm.at.Seconds(), sm.replicas, sm.backlog)
		}
	}
	res := rec.score(10, load, 20*time.Second)
	res.waitP95, _ = waits.Quantile(0.95)
	if res.toNeeded < 0 {
		t.Errorf("never reached the 10 replicas the load needs (peak %d)", res.peakReplicas)
	}
	return res
}
