package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestNoisyNeighbours: one namespace names 32 hosts that accept a
// connection and never answer, another 256 topics on an nsqlookupd that
// never answers. A third namespace reads the real nsqd directly and a topic
// through the real, shared nsqlookupd: its reads never fail (no
// QueueUnreadable), and its reaction to a burst stays within 1 s of the
// same reaction measured before the neighbours came. The figures go to
// BENCHMARKS.md ("Noisy neighbours").
func TestNoisyNeighbours(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	for _, ns := range []string{"victim", "hung-hosts", "hung-lookupd"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	ensureChannel(t, s, "jobs", "work")
	ensureChannel(t, s, "shared", "work")
	victim := func(queue string) map[string]string {
		return map[string]string{"microscaling.com/queue": queue, "microscaling.com/target-queue-length": "50",
			"microscaling.com/min-replicas": "1", "microscaling.com/max-replicas": "10", "microscaling.com/scale-down-delay": "0s"}
	}
	create(t, s, deployment("victim", "direct", 1, victim("nsq://"+s.NSQ.HTTPAddr+"/jobs/work")))
	create(t, s, deployment("victim", "looked-up", 1, victim("nsqlookupd://"+s.NSQ.LookupdHTTPAddr+"/shared/work")))
	c := startController(t, s.Kubeconfig)

	const trials = 8
	measure := func(phase string) map[string][]time.Duration {
		got := map[string][]time.Duration{}
		for range trials {
			for name, topic := range map[string]string{"direct": "jobs", "looked-up": "shared"} {
				emptyTopic(t, s, topic, "work")
				waitReplicas(t, s, "victim", name, 20*time.Second, "1", func(n int32) bool { return n == 1 })
				got[name] = append(got[name], reaction(t, s, "victim", name, 1, topic, 60))
			}
		}
		for name, d := range got {
			slices.Sort(d)
			t.Logf("NEIGHBOURS %s %s: median %s, worst %s, all %v", phase, name, d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), d)
		}
		return got
	}
	quiet := measure("quiet")

	hungNeighbours(t, s)
	noisy := measure("noisy")

	for name := range quiet {
		q, n := quiet[name][trials/2], noisy[name][trials/2]
		if n-q > time.Second {
			t.Errorf("victim/%s reacted in %s (median) beside the neighbours, %s alone: more than 1 s slower", name, n.Round(time.Millisecond), q.Round(time.Millisecond))
		}
		for _, e := range mustEvents(t, s, "victim", name) {
			if strings.Contains(e, "QueueUnreadable") {
				t.Errorf("victim/%s: %s", name, e)
			}
		}
	}
	if n, err := c.metric(t.Context(), "microscaling_queue_read_errors_total"); err != nil || n == 0 {
		t.Errorf("read errors counted: %v (%v); the neighbours' reads should have failed", n, err)
	}
}

// every calls f(0), f(1), ... once a period until ctx ends or f returns
// false.
func every(ctx context.Context, period time.Duration, f func(n int) bool) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !f(n) {
			return
		}
	}
}

// hungNeighbours fills namespaces hung-hosts (32 Deployments on hosts
// that accept and never answer) and hung-lookupd (256 topics on an
// nsqlookupd that never answers), and waits until the controller reads
// them and their reads time out.
func hungNeighbours(t *testing.T, s *harness.Stack) {
	t.Helper()
	for i := range 32 {
		create(t, s, deployment("hung-hosts", fmt.Sprintf("hung-%d", i), 0, map[string]string{
			"microscaling.com/queue": "nsq://" + hungHost(t) + "/t/c", "microscaling.com/target-queue-length": "10",
			"microscaling.com/min-replicas": "0", "microscaling.com/max-replicas": "3"}))
	}
	lookupd := hungHost(t)
	for i := range 256 {
		create(t, s, deployment("hung-lookupd", fmt.Sprintf("topic-%d", i), 0, map[string]string{
			"microscaling.com/queue": fmt.Sprintf("nsqlookupd://%s/topic-%d/c", lookupd, i), "microscaling.com/target-queue-length": "10",
			"microscaling.com/min-replicas": "0", "microscaling.com/max-replicas": "3"}))
	}
	waitEvent(t, s, "hung-hosts", "hung-31", "Warning QueueUnreadable", 30*time.Second)
	waitEvent(t, s, "hung-lookupd", "topic-0", "Warning QueueUnreadable", 30*time.Second)
}

// hungHost is a 127.0.0.1 address that accepts connections and never
// answers, until the test ends.
func hungHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// emptyTopic drops what waits on topic's channel on the harness's nsqd.
func emptyTopic(t *testing.T, s *harness.Stack, topic, channel string) {
	t.Helper()
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		return s.NSQ.EmptyChannel(ctx, topic, channel)
	})
}

// TestAnnotationFlood: five Deployments re-annotated five times a second
// (as fast as this API server takes them), each time with 3,000 unknown
// microscaling.com/ keys. /healthz never fails, half the ticks finish
// within a quarter second of schedule and none is a whole tick late,
// each flooded Deployment is told the bound, and a victim's burst is still
// answered.
//
// A tick waits for its writes, and the flood slows the API server for
// everyone: the victim's scale-ups take up to 0.35 s and the flooded
// Deployments' own scale-downs, conflicting with their flood, up to a
// second on two cores. That is the API server's latency, not the
// controller's; it shows in the few ticks that write, never in most of
// them, which is where parsing 3,000 keys on the loop's path would show
// (p50 here 15 to 25 ms).
func TestAnnotationFlood(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	for _, ns := range []string{"victim", "flood"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("victim", "consumer", 1, map[string]string{"microscaling.com/queue": "nsq://" + s.NSQ.HTTPAddr + "/jobs/work",
		"microscaling.com/target-queue-length": "50", "microscaling.com/min-replicas": "1", "microscaling.com/max-replicas": "10"}))
	for i := range 5 {
		create(t, s, deployment("flood", fmt.Sprintf("noisy-%d", i), 2, map[string]string{"microscaling.com/queue": "nsq://" + s.NSQ.HTTPAddr + "/jobs/other",
			"microscaling.com/target-queue-length": "50", "microscaling.com/max-replicas": "3"}))
	}
	c := startController(t, s.Kubeconfig)
	lagBefore, err := c.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}

	// The flood's own client, not held to client-go's default 5 requests a second.
	cfg := rest.CopyConfig(s.Config)
	cfg.QPS, cfg.Burst = 100, 100
	flood, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// Two sets of the same 3,000 keys with other values: every patch
	// changes them all.
	var bodies [2][]byte
	for n := range bodies {
		keys := make(map[string]string, 3000)
		for k := range 3000 {
			keys[fmt.Sprintf("microscaling.com/unknown-%d", k)] = strconv.Itoa(n)
		}
		if bodies[n], err = json.Marshal(map[string]any{"metadata": map[string]any{"annotations": keys}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var patches atomic.Int64
	for i := range 5 {
		wg.Go(func() {
			every(ctx, 200*time.Millisecond, func(n int) bool {
				_, err := flood.AppsV1().Deployments("flood").Patch(ctx, fmt.Sprintf("noisy-%d", i), types.MergePatchType, bodies[n%2], metav1.PatchOptions{})
				if err != nil && ctx.Err() == nil {
					t.Errorf("re-annotating noisy-%d: %v", i, err)
					return false
				}
				patches.Add(1)
				return true
			})
		})
	}
	// /healthz every 100 ms, and a burst for the victim half way.
	var unhealthy []string
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := c.get(ctx, "/healthz"); err != nil && ctx.Err() == nil {
				unhealthy = append(unhealthy, err.Error())
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	<-time.After(10 * time.Second)
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "victim", "consumer", 10*time.Second, "more than 1 during the flood", func(n int32) bool { return n > 1 })
	wg.Wait()

	lagAfter, err := c.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p99, ticks, err := quantileBetween(lagBefore, lagAfter, "microscaling_tick_lag_seconds", 0.99)
	if err != nil {
		t.Fatal(err)
	}
	p50, _, err := quantileBetween(lagBefore, lagAfter, "microscaling_tick_lag_seconds", 0.5)
	if err != nil {
		t.Fatal(err)
	}
	p90, _, err := quantileBetween(lagBefore, lagAfter, "microscaling_tick_lag_seconds", 0.9)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FLOOD: %d re-annotations of 3,000 unknown keys in 20 s; %d ticks, lag p50 %.3f p90 %.3f p99 %.3f s (bucket bounds); /healthz failures %d", patches.Load(), ticks, p50, p90, p99, len(unhealthy))
	// The API server takes 65 to 130 of these in 20 s here, less the busier
	// the machine; each is 89 KB of annotations to decode.
	if patches.Load() < 50 {
		t.Errorf("only %d re-annotations reached the API server: not a flood", patches.Load())
	}
	if len(unhealthy) > 0 {
		t.Errorf("/healthz failed %d times during the flood: %v", len(unhealthy), unhealthy[0])
	}
	if p50 >= 0.25 {
		t.Errorf("tick lag p50 %.3f s during the flood, want under 0.25 s", p50)
	}
	if p99 >= 2 {
		t.Errorf("tick lag p99 %.3f s during the flood: a tick missed, want under 2 s", p99)
	}
	for i := range 5 {
		waitEvent(t, s, "flood", fmt.Sprintf("noisy-%d", i), "at most 32 microscaling.com/ annotations", 10*time.Second)
	}
}

// quantileBetween is the q quantile of histogram name over the
// observations made between two scrapes of /metrics, as the upper bound of
// its bucket, and how many observations there were.
func quantileBetween(before, after, name string, q float64) (float64, int64, error) {
	buckets := func(body string) (map[float64]int64, error) {
		out := map[float64]int64{}
		for _, line := range strings.Split(body, "\n") {
			rest, ok := strings.CutPrefix(line, name+`_bucket{le="`)
			if !ok {
				continue
			}
			le, count, ok := strings.Cut(rest, `"} `)
			if !ok {
				return nil, fmt.Errorf("a bucket line not understood: %q", line)
			}
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return nil, err
			}
			n, err := strconv.ParseInt(strings.Fields(count)[0], 10, 64)
			if err != nil {
				return nil, err
			}
			out[bound] = n
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no buckets of %s", name)
		}
		return out, nil
	}
	b0, err := buckets(before)
	if err != nil {
		return 0, 0, err
	}
	b1, err := buckets(after)
	if err != nil {
		return 0, 0, err
	}
	bounds := slices.Sorted(maps.Keys(b1))
	total := b1[math.Inf(1)] - b0[math.Inf(1)]
	if total == 0 {
		return 0, 0, fmt.Errorf("no %s observed", name)
	}
	for _, le := range bounds {
		if float64(b1[le]-b0[le]) >= q*float64(total) {
			return le, total, nil
		}
	}
	return math.Inf(1), total, nil
}

// TestPhantomNSQD: a tenant's nsqd registers a victim's topic on the shared
// nsqlookupd under an address where nothing answers, then goes away. While
// it is announced the victim is held (a sum without it could look like a
// shrinking backlog); once gone it holds the victim no longer than the
// victim's scale-down delay (10 s here; the default is 30 s), and the
// topic is read again.
func TestPhantomNSQD(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, map[string]string{"microscaling.com/queue": "nsqlookupd://" + s.NSQ.LookupdHTTPAddr + "/jobs/work",
		"microscaling.com/target-queue-length": "50", "microscaling.com/min-replicas": "1", "microscaling.com/max-replicas": "10",
		"microscaling.com/scale-down-delay": "10s"}))
	const delay = 10 * time.Second
	c := startController(t, s.Kubeconfig)
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		st, err := memberStatus(ctx, c, "consumer")
		if err == nil && !st.BacklogKnown {
			err = errors.New("the consumer's queue is not read yet")
		}
		return err
	})

	stop, err := s.NSQ.StartPhantom(t.Context(), "jobs")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	waitEvent(t, s, "default", "consumer", "Warning QueueUnreadable", 30*time.Second)
	stop()
	gone := time.Now()
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		return hasEvent(ctx, s, "consumer", "Normal QueueReadable")
	})
	back := time.Since(gone)
	t.Logf("PHANTOM: read again %.1f s after the phantom nsqd went away (scale-down delay %s)", back.Seconds(), delay)
	if back > delay+5*time.Second {
		t.Errorf("read again %.1f s after the phantom went away, want within the scale-down delay (%s) and a few ticks", back.Seconds(), delay)
	}
	if n := mustReplicas(t, s, "default", "consumer"); n != 1 {
		t.Errorf("the consumer has %d replicas, want 1 (held, then an empty queue)", n)
	}
}

// TestNestedAnswer: a tenant's "nsqd" answers 64 MiB of nested {"data":
// wrappers on every read, with --queue-max-bytes raised to 128 MiB so the
// size bound does not stop it first. The controller process keeps a
// bounded stack and heap, the tenant's member is told its answer is
// malformed, and a victim's burst is answered.
func TestNestedAnswer(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	nested := []byte(strings.Repeat(`{"data":`, (64<<20)/8) + "{}")
	hostile := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(nested) }))
	if _, err := s.Kubectl(t.Context(), "create", "namespace", "attacker"); err != nil {
		t.Fatal(err)
	}
	create(t, s, deployment("attacker", "nested", 1, map[string]string{"microscaling.com/queue": "nsq://" + hostile + "/jobs/work",
		"microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "50", "min-replicas", "1", "max-replicas", "10")))
	c := startController(t, s.Kubeconfig, "--queue-max-bytes=134217728", "--queue-timeout=5s")
	waitEvent(t, s, "attacker", "nested", "Warning QueueUnreadable", 30*time.Second)
	for _, e := range mustEvents(t, s, "attacker", "nested") {
		if strings.HasPrefix(e, "Warning QueueUnreadable") && !strings.Contains(e, "malformed answer") {
			t.Errorf("the Event does not say the answer is malformed: %s", e)
		}
	}
	// Ten more ticks of reading it, then the victim's burst.
	var stackMax, heapMax float64
	for range 10 {
		for name, max := range map[string]*float64{"go_memstats_stack_inuse_bytes": &stackMax, "go_memstats_heap_inuse_bytes": &heapMax} {
			v, err := c.metric(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			*max = math.Max(*max, v)
		}
		<-time.After(time.Second)
	}
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "more than 1", func(n int32) bool { return n > 1 })
	t.Logf("NESTED: 64 MiB nested answer read every tick: stack in use at most %.1f MiB, heap in use at most %.1f MiB", stackMax/(1<<20), heapMax/(1<<20))
	if stackMax > 8<<20 {
		t.Errorf("stack in use reached %.1f MiB reading a nested answer, want at most 8", stackMax/(1<<20))
	}
	if heapMax > 64<<20 {
		t.Errorf("heap in use reached %.1f MiB reading a nested answer, want at most 64", heapMax/(1<<20))
	}
}

// TestRiseAndFallBesideNeighbours: beside the same neighbours as
// TestNoisyNeighbours (32 hung hosts, a hung lookupd with 256 topics), a
// victim consumed by real go-nsq consumers follows a slow rise, a hold and
// a fall within the bounds a quiet cluster meets (TestLinearRiseKeepsUp's):
// the replicas the top rate needs by shortly after the rise, the backlog
// within 5 s of the top rate over its target, no scale-down taken back
// while the rate only rises, and back down within its scale-down delay
// and a few ticks once the rate falls; its queue never unreadable.
func TestRiseAndFallBesideNeighbours(t *testing.T) {
	const target, per = 30, 125 * time.Millisecond
	s, _, _ := consumerStack(t, target, per, 4)
	for _, ns := range []string{"hung-hosts", "hung-lookupd"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	hungNeighbours(t, s)
	waitEvent(t, s, "hung-lookupd", "topic-255", "Warning QueueUnreadable", 30*time.Second)

	const (
		rise, top, low = 60 * time.Second, 40.0, 4.0
		fallAt, end    = 80 * time.Second, 140 * time.Second
	)
	up := workload.Ramp{From: 2, To: top, Rise: rise}
	rate := func(at time.Duration) float64 {
		if at >= fallAt {
			return low
		}
		return up.Rate(at)
	}
	needed := int32(math.Ceil(top * per.Seconds()))
	var rec loadRecord
	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { rec.record(ctx, t, s, "consumer", "jobs", "work", start) })
	defer func() { cancel(); wg.Wait() }()
	pctx, pcancel := context.WithTimeout(t.Context(), end)
	defer pcancel()
	if err := workload.ProduceRate(pctx, s.NSQ.TCPAddr, "jobs", rate); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()

	bound := int64(target + 5*top)
	var (
		peak      loadSample
		reached   = time.Duration(-1)
		down      = time.Duration(-1)
		lastDown  bool
		reversals int
		history   []int32
	)
	for i, sm := range rec.samples {
		if sm.at < fallAt && sm.backlog > peak.backlog {
			peak = sm
		}
		if reached < 0 && sm.replicas >= needed {
			reached = sm.at
		}
		if down < 0 && sm.at > fallAt && sm.replicas <= 2 {
			down = sm.at - fallAt
		}
		if i == 0 || sm.replicas != rec.samples[i-1].replicas {
			history = append(history, sm.replicas)
		}
		if i > 0 && sm.at < rise {
			switch prev := rec.samples[i-1].replicas; {
			case sm.replicas < prev:
				lastDown = true
			case sm.replicas > prev && lastDown:
				reversals++
				lastDown = false
			}
		}
	}
	t.Logf("RISE AND FALL BESIDE NEIGHBOURS: needed %d reached at %.1f s (rise ends at %.0f s), peak backlog %d at %.1f s (bound %d), down to 2 or fewer %.1f s after the fall, replicas %v",
		needed, reached.Seconds(), rise.Seconds(), peak.backlog, peak.at.Seconds(), bound, down.Seconds(), history)
	if reached < 0 || reached > rise+20*time.Second {
		t.Errorf("the victim did not reach the %d replicas %.0f msg/s needs within 20 s of the rise's end: replicas went %v", needed, top, history)
	}
	if peak.backlog > bound {
		t.Errorf("backlog reached %d at %.1f s, over %d (target %d + 5 s of the top rate)", peak.backlog, peak.at.Seconds(), bound, target)
	}
	if reversals > 0 {
		t.Errorf("%d scale-downs taken back while the rate only rose: replicas went %v", reversals, history)
	}
	if delay := annotations.DefaultScaleDownDelay; down < 0 || down > delay+15*time.Second {
		t.Errorf("the victim was not back to 2 or fewer replicas within its scale-down delay (%s) and 15 s of the fall: replicas went %v", delay, history)
	}
	for _, e := range mustEvents(t, s, "default", "consumer") {
		if strings.Contains(e, "QueueUnreadable") {
			t.Errorf("victim: %s", e)
		}
	}
}
