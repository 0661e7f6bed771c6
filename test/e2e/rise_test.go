package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
		// notReady keeps every pod but the oldest NotReady while it runs
		// and consumes, as a readiness probe that fails under load does.
		notReady bool
	}{
		// The shape the stall was found with: 8 msg/s a replica, 4 held.
		{name: "8/s-in-flight-4", perMessage: 125 * time.Millisecond, maxInFlight: 4,
			ramp: workload.Ramp{From: 2, To: 56, Rise: 100 * time.Second}, target: 30},
		// Slower work, one message held at a time.
		{name: "5/s-in-flight-1", perMessage: 200 * time.Millisecond, maxInFlight: 1,
			ramp: workload.Ramp{From: 1, To: 38, Rise: 80 * time.Second}, target: 20},
		// Kubernetes' Ready count is not the consumers': pods that consume
		// while their readiness probe fails (busy, or not past its initial
		// delay) are capacity all the same.
		{name: "8/s-not-ready-under-load", perMessage: 125 * time.Millisecond, maxInFlight: 4,
			ramp: workload.Ramp{From: 2, To: 56, Rise: 100 * time.Second}, target: 30, notReady: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			riseRun(t, tc.perMessage, tc.maxInFlight, tc.ramp, tc.target, tc.notReady)
		})
	}
}

func riseRun(t *testing.T, per time.Duration, inFlight int, ramp workload.Ramp, target int64, notReady bool) {
	s, c, _ := consumerStack(t, target, per, inFlight)

	const hold = 40 * time.Second
	service := float64(time.Second) / float64(per)
	needed := int32(math.Ceil(ramp.To/service - 1e-9))
	var rec loadRecord
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { rec.record(ctx, t, s, "consumer", "jobs", "work", start) })
	wg.Go(func() { logRates(ctx, t, c) })
	if notReady {
		wg.Go(func() { failReadiness(ctx, t, s, "default", "app=consumer") })
	}
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
	when := "never"
	if reached >= 0 {
		when = fmt.Sprintf("at %.1f s", reached.Seconds())
	}
	t.Logf("RISE %s: needed %d reached %s (rise ends at %.0f s), peak backlog %d at %.1f s (bound %d), replicas %v",
		t.Name(), needed, when, ramp.Rise.Seconds(), peak.backlog, peak.at.Seconds(), bound, history)
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

// consumerStack starts a stack with a consumer Deployment (1 replica, up to
// 40) holding target on jobs/work, the controller, and one go-nsq consumer
// per Running pod taking per on each message, inFlight held.
func consumerStack(t *testing.T, target int64, per time.Duration, inFlight int) (*harness.Stack, *controller, *workload.Consumers) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", fmt.Sprint(target), "min-replicas", "1", "max-replicas", "40"), "10m"))
	c := startController(t, s.Kubeconfig)
	cons := runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: per, MaxInFlight: inFlight})
	return s, c, cons
}

// watchState hands each member of the controller's /api/state to seen,
// every interval, until ctx ends.
func watchState(ctx context.Context, t *testing.T, c *controller, every time.Duration, seen func(dashboard.MemberHistory)) {
	tick := time.NewTicker(every)
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
			seen(m)
		}
	}
}

// logRates logs the controller's view of each member every 5 s: what a
// reader of the test's log needs to tell a wrong rate from a slow reaction.
func logRates(ctx context.Context, t *testing.T, c *controller) {
	watchState(ctx, t, c, 5*time.Second, func(m dashboard.MemberHistory) {
		t.Logf("state %s: replicas %d, backlog %d, in %.1f/s, out %.1f/s per replica, held %q",
			m.Name, m.Status.Replicas, m.Status.Backlog, m.Status.Arrival, m.Status.Service, m.Status.Held)
	})
}

// failReadiness marks every Running pod of selector but the oldest
// NotReady, as the kubelet does when a readiness probe fails, until ctx
// ends. kwok readies only Pending pods, so the mark stays; the pods keep
// running and their consumers keep consuming.
func failReadiness(ctx context.Context, t *testing.T, s *harness.Stack, ns, selector string) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		pods, err := s.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t.Errorf("listing pods: %v", err)
			return
		}
		running := slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool { return p.Status.Phase != corev1.PodRunning })
		slices.SortFunc(running, func(a, b corev1.Pod) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
		for i := range running {
			p := &running[i]
			j := slices.IndexFunc(p.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == corev1.PodReady })
			if i == 0 || j < 0 || p.Status.Conditions[j].Status == corev1.ConditionFalse {
				continue
			}
			p.Status.Conditions[j].Status, p.Status.Conditions[j].Reason = corev1.ConditionFalse, "ReadinessProbeFailed"
			_, err := s.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			if ctx.Err() != nil {
				return
			}
			if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				t.Errorf("marking pod %s NotReady: %v", p.Name, err)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// TestGuardCorrectsASlowdown holds a steady load while every consumer's work
// on a message doubles (a downstream dependency slowing down). Whatever
// the service estimate does, the backlog must not run away: the consumer
// grows to the replicas the slower work needs, and if the estimate lagged
// so far that the backlog grew above its target for several intervals
// with the replicas put, the member says so once with a Warning
// EstimateCorrected naming both figures, and /api/state shows it.
func TestGuardCorrectsASlowdown(t *testing.T) {
	s, c, cons := consumerStack(t, 30, 125*time.Millisecond, 4)

	var rec loadRecord
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { rec.record(ctx, t, s, "consumer", "jobs", "work", start) })
	wg.Go(func() { logRates(ctx, t, c) })
	defer func() { cancel(); wg.Wait() }()
	var corrected []string
	wg.Go(func() {
		watchState(ctx, t, c, time.Second, func(m dashboard.MemberHistory) {
			if m.Status.Corrected != "" && (len(corrected) == 0 || corrected[len(corrected)-1] != m.Status.Corrected) {
				corrected = append(corrected, m.Status.Corrected)
			}
		})
	})
	// 20 msg/s: 3 replicas at 8/s; from 40 s on, 4/s a replica: 5 needed.
	const slowAt, load = 40 * time.Second, 120 * time.Second
	pctx, pcancel := context.WithTimeout(t.Context(), load)
	defer pcancel()
	wg.Go(func() {
		select {
		case <-pctx.Done():
		case <-time.After(slowAt):
			cons.SlowTo(250 * time.Millisecond)
		}
	})
	if err := workload.ProduceRate(pctx, s.NSQ.TCPAddr, "jobs", func(time.Duration) float64 { return 20 }); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()

	var peak loadSample
	var last int32
	for _, sm := range rec.samples {
		if sm.backlog > peak.backlog {
			peak = sm
		}
		last = sm.replicas
	}
	evs := mustEvents(t, s, "default", "consumer")
	var told []string
	for _, e := range evs {
		if strings.Contains(e, "EstimateCorrected") {
			told = append(told, e)
		}
	}
	t.Logf("SLOWDOWN: replicas at the end %d, peak backlog %d at %.1f s, EstimateCorrected Events %q, /api/state %q", last, peak.backlog, peak.at.Seconds(), told, corrected)
	if last < 5 {
		t.Errorf("consumer at %d replicas after the work doubled, want at least 5 (20/s at 4/s a replica)", last)
	}
	if bound := int64(30 + 5*20); peak.backlog > 4*bound {
		t.Errorf("backlog reached %d: the rule fell behind the slowdown", peak.backlog)
	}
	if len(told) > 1 {
		t.Errorf("EstimateCorrected told %d times, want at most once: %q", len(told), told)
	}
	if (len(told) == 1) != (len(corrected) > 0) {
		t.Errorf("the Event (%q) and /api/state (%q) disagree on a correction", told, corrected)
	}
	for _, e := range told {
		if !strings.Contains(e, "estimated") || !strings.Contains(e, "delivered") {
			t.Errorf("EstimateCorrected does not name both figures: %q", e)
		}
	}
}
