package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestLinearRiseKeepsUp drives a producer whose rate rises linearly and then
// holds, consumed by real go-nsq consumers (one per Running pod), at two
// consumer shapes. The consumer must reach the replicas the top rate needs,
// hold the backlog within a few intervals' load of its target all along,
// and never take a scale-down back while the rate only rises.
func TestLinearRiseKeepsUp(t *testing.T) {
	for _, tc := range []struct {
		name        string
		perMessage  time.Duration
		maxInFlight int
		ramp        workload.Ramp
		target      int64
	}{
		// The shape the stall was found with: 8 msg/s a replica, 4 held.
		{name: "8/s-in-flight-4", perMessage: 125 * time.Millisecond, maxInFlight: 4,
			ramp: workload.Ramp{From: 2, To: 56, Rise: 100 * time.Second}, target: 30},
		// Slower work, one message held at a time.
		{name: "5/s-in-flight-1", perMessage: 200 * time.Millisecond, maxInFlight: 1,
			ramp: workload.Ramp{From: 1, To: 38, Rise: 80 * time.Second}, target: 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			riseRun(t, tc.perMessage, tc.maxInFlight, tc.ramp, tc.target)
		})
	}
}

func riseRun(t *testing.T, per time.Duration, inFlight int, ramp workload.Ramp, target int64) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", fmt.Sprint(target), "min-replicas", "1", "max-replicas", "40"), "10m"))
	c := startController(t, s.Kubeconfig)
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: per, MaxInFlight: inFlight})

	const hold = 40 * time.Second
	service := float64(time.Second) / float64(per)
	needed := int32(math.Ceil(ramp.To/service - 1e-9))
	var rec loadRecord
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { rec.record(ctx, t, s, "consumer", "jobs", "work", start) })
	wg.Go(func() { logRates(ctx, t, c) })
	defer func() { cancel(); wg.Wait() }()
	pctx, pcancel := context.WithTimeout(t.Context(), ramp.Rise+hold)
	defer pcancel()
	if err := workload.ProduceRate(pctx, s.NSQ.TCPAddr, "jobs", ramp.Rate); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()

	// A few intervals' load: what arrives at the top rate in 5 s, over the target.
	bound := target + int64(5*ramp.To)
	var (
		peak              loadSample
		reached           = time.Duration(-1)
		lastDown, history = false, []int32{}
		reversals         int
	)
	for i, sm := range rec.samples {
		if sm.backlog > peak.backlog {
			peak = sm
		}
		if reached < 0 && sm.replicas >= needed {
			reached = sm.at
		}
		if i == 0 || sm.replicas != rec.samples[i-1].replicas {
			history = append(history, sm.replicas)
		}
		if i > 0 && sm.at < ramp.Rise {
			switch prev := rec.samples[i-1].replicas; {
			case sm.replicas < prev:
				lastDown = true
			case sm.replicas > prev && lastDown:
				reversals++
				lastDown = false
			}
		}
	}
	t.Logf("RISE %s: needed %d reached at %.1f s (rise ends at %.0f s), peak backlog %d at %.1f s (bound %d), replicas %v",
		t.Name(), needed, reached.Seconds(), ramp.Rise.Seconds(), peak.backlog, peak.at.Seconds(), bound, history)
	if reached < 0 || reached > ramp.Rise+hold/2 {
		t.Errorf("the consumer did not reach the %d replicas %.0f msg/s needs within %s of the rise's end: replicas went %v", needed, ramp.To, hold/2, history)
	}
	if peak.backlog > bound {
		t.Errorf("backlog reached %d at %.1f s, over %d (target %d + 5 s of the top rate): the rule fell behind", peak.backlog, peak.at.Seconds(), bound, target)
	}
	if reversals > 0 {
		t.Errorf("%d scale-downs taken back while the rate only rose: replicas went %v", reversals, history)
	}
}

// logRates logs the controller's view of the consumer every 5 s: what a
// reader of the test's log needs to tell a wrong rate from a slow reaction.
func logRates(ctx context.Context, t *testing.T, c *controller) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		body, err := c.get(ctx, "/api/state")
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t.Errorf("reading /api/state: %v", err)
			return
		}
		var st dashboard.State
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Errorf("decoding /api/state: %v", err)
			return
		}
		for _, m := range st.Members {
			t.Logf("state %s: replicas %d, backlog %d, in %.1f/s, out %.1f/s per replica, held %q",
				m.Name, m.Status.Replicas, m.Status.Backlog, m.Status.Arrival, m.Status.Service, m.Status.Held)
		}
	}
}
