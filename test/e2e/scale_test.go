package e2e

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestScaleBenchmark is the benchmark of BENCHMARKS.md's scale section, not a
// pass/fail check: MICROSCALING_BENCH=1, sizes in MICROSCALING_SCALE_SIZES
// (default 100,1000,10000). Per size: a fresh stack, N Deployments in N/5
// groups (4 queue members and a remainder that fits no node) over 2
// namespaces (past 10,000, one per thousand: benchNamespaces), one nsqd with a topic per group. MICROSCALING_SCALE_SOURCES=1
// spreads the groups over the five sources instead, a fifth each: NSQ,
// RabbitMQ (a queue per group, one vhost), a Redis list, a NATS JetStream
// consumer and a Prometheus query, each server on this machine.
func TestScaleBenchmark(t *testing.T) {
	if os.Getenv("MICROSCALING_BENCH") == "" {
		t.Skip("benchmark: set MICROSCALING_BENCH=1")
	}
	sizes := "100,1000,10000"
	if v := os.Getenv("MICROSCALING_SCALE_SIZES"); v != "" {
		sizes = v
	}
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(f, func(t *testing.T) { scaleRun(t, n) })
	}
}

func scaleRun(t *testing.T, n int) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "64", Memory: "256Gi", Pods: 1000}}})
	groups := n / 5
	ensureRemainderClass(t, s)
	namespaces := benchNamespaces(n)
	for _, ns := range namespaces {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	// Queues first, so every one reads as empty, not missing.
	queueOf := func(g int) string { return fmt.Sprintf("nsq://%s/t%d/c", s.NSQ.HTTPAddr, g) }
	var args []string
	mixed := os.Getenv("MICROSCALING_SCALE_SOURCES") != ""
	if mixed {
		queueOf, args = scaleSources(t, s, groups, namespaces)
	}
	for g := range groups {
		if !mixed || g%5 == 0 {
			ensureChannel(t, s, "t"+strconv.Itoa(g), "c")
		}
	}
	benchDeployments(t, s, n, namespaces, queueOf)

	start := time.Now()
	c := startController(t, s.Kubeconfig, append(append([]string{"--profiling"}, args...), strings.Fields(os.Getenv("MICROSCALING_CONTROLLER_ARGS"))...)...)
	ready := time.Since(start)
	eventually(t, 5*time.Minute, func(ctx context.Context) error {
		v, err := c.metric(ctx, "microscaling_tick_duration_seconds_count")
		if err != nil || v < 1 {
			return fmt.Errorf("%v ticks", v)
		}
		return nil
	})
	firstTick := time.Since(start)
	// Let the first ticks settle, then measure 30 s of steady state.
	time.Sleep(5 * time.Second) // warm-up before the measured window
	// Events the first ticks raised (a server that failed the first read
	// makes each of its members hold with a Warning) and each member's
	// first condition are sent at their clients' pace: the window starts
	// once they are, or it would measure a start, not a steady state. The
	// conditions go at --condition-qps (20 a second): 10,000 take over 8
	// minutes. (At 500 a second on this machine's two cores, members were
	// seen flipping to QueueUnreadable and back for minutes, each flip a
	// condition again: the window never began.)
	settle(t, n, c)
	if path := os.Getenv("MICROSCALING_PROFILE"); path != "" {
		// A heap profile before and after the CPU profile: pprof
		// -diff_base gives the allocations of those 15 steady seconds.
		heap0, err := c.get(t.Context(), "/debug/pprof/heap")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s.heap0.%d", path, n), []byte(heap0), 0o644); err != nil {
			t.Fatal(err)
		}
		secs := cmp.Or(os.Getenv("MICROSCALING_PROFILE_SECONDS"), "15")
		if _, err := strconv.ParseUint(secs, 10, 8); err != nil {
			t.Fatalf("MICROSCALING_PROFILE_SECONDS=%q: %v", secs, err)
		}
		prof, err := c.get(t.Context(), "/debug/pprof/profile?seconds="+secs)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s.%d", path, n), []byte(prof), 0o644); err != nil {
			t.Fatal(err)
		}
		heap, err := c.get(t.Context(), "/debug/pprof/heap")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s.heap.%d", path, n), []byte(heap), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// RSS and CPU come from /proc, so that measuring does not cost the
	// controller a /metrics rendering a second.
	m0 := scrape(t, c)
	cpu0 := procCPU(t, c.cmd.Process.Pid)
	window := benchWindow(t, 30*time.Second)
	samples := sampleRSS(t, window, c.cmd.Process.Pid)[0]
	cpu1 := procCPU(t, c.cmd.Process.Pid)
	m1 := scrape(t, c)
	ticks := m1["microscaling_tick_duration_seconds_count"] - m0["microscaling_tick_duration_seconds_count"]
	per := func(k string) float64 { return (m1[k] - m0[k]) / ticks }
	writes := 0.0
	reads := 0.0
	for k := range m1 {
		if strings.HasPrefix(k, "microscaling_api_requests_total") {
			if strings.Contains(k, `verb="GET"`) {
				reads += m1[k] - m0[k]
			} else if !strings.Contains(k, `resource="events"`) && !strings.Contains(k, `resource="leases"`) {
				writes += m1[k] - m0[k]
			}
		}
	}
	p50, p99 := histQuantile(m0, m1, "microscaling_tick_lag_seconds_bucket{", 0.5), histQuantile(m0, m1, "microscaling_tick_lag_seconds_bucket{", 0.99)

	// Reaction under load: a backlog step on one group among all of them.
	var reactions []time.Duration
	for i := range 5 {
		g := i * (groups / 5)
		reactions = append(reactions, reaction(t, s, namespaces[g%len(namespaces)], fmt.Sprintf("g%d-q1", g), 0, "t"+strconv.Itoa(g), 100))
	}
	slices.Sort(reactions)
	stats := `microscaling_queue_read_duration_seconds_bucket{host="` + s.NSQ.HTTPAddr + `",`
	line := fmt.Sprintf("SCALE deployments=%d groups=%d ready=%s first-tick=%s rss-mib=%.0f (max %.0f) heap-inuse-mib=%.0f next-gc-mib=%.0f "+
		"cpu-ms-per-tick=%.1f lag-p50-ms=%.0f lag-p99-ms=%.0f stats-read-p50-ms=%.1f "+
		"api-reads-per-tick=%.2f api-writes-per-tick=%.2f nsq-stats-per-tick=%.2f ticks=%.0f reaction-median=%s reaction-worst=%s",
		n, groups, ready.Round(10*time.Millisecond), firstTick.Round(10*time.Millisecond), samples.median/(1<<20), samples.max/(1<<20),
		m1["go_memstats_heap_inuse_bytes"]/(1<<20), m1["go_memstats_next_gc_bytes"]/(1<<20),
		1000*(cpu1-cpu0)/ticks, 1000*p50, 1000*p99, 1000*histQuantile(m0, m1, stats, 0.5), reads/ticks, writes/ticks,
		per(`microscaling_queue_read_duration_seconds_count{host="`+s.NSQ.HTTPAddr+`"}`), ticks,
		reactions[len(reactions)/2].Round(time.Millisecond), reactions[len(reactions)-1].Round(time.Millisecond))
	if mixed {
		line += " reads-per-tick-by-host=" + perTickBy(m0, m1, ticks, "microscaling_queue_read_duration_seconds_count")
	}
	// What a tick allocates sets how often the collector runs, and what
	// it costs; both steadier than the CPU time on a shared machine.
	line += fmt.Sprintf(" alloc-mib-per-tick=%.2f gc-per-tick=%.2f stack-mib=%.1f goroutines=%.0f", per("go_memstats_alloc_bytes_total")/(1<<20), per("go_gc_duration_seconds_count"),
		m1["go_memstats_stack_inuse_bytes"]/(1<<20), m1["go_goroutines"])
	line += fmt.Sprintf(" events-sent-per-tick=%.2f", (eventsSent(m1)-eventsSent(m0))/ticks)
	line += " read-errors-per-tick=" + perTickBy(m0, m1, ticks, "microscaling_queue_read_errors_total")
	t.Log(line)
	fmt.Println(line)
	fmt.Println("LAG-BUCKETS", lagBuckets(m0, m1, "microscaling_tick_lag_seconds"))
	fmt.Println("EVENTS", eventReasons(t, s, namespaces...))
}

// benchNamespaces are the namespaces of the benchmark at n Deployments:
// two up to 10,000, then one per thousand. (The deployment controller
// looks through a namespace's ReplicaSets for each Deployment it syncs: at
// 15,000 a namespace, it had not caught up with 30,000 new Deployments
// after 15 minutes.)
func benchNamespaces(n int) []string {
	if n <= 10000 {
		return []string{"bench-a", "bench-b"}
	}
	out := make([]string, n/1000)
	for i := range out {
		out[i] = fmt.Sprintf("bench-%d", i)
	}
	return out
}

// benchDeployments makes the benchmark's Deployments: for each of the n/5
// groups (group g in namespaces[g%len(namespaces)]), four queue members
// reading queueOf(g) and a remainder that fits no node; then it waits
// until the deployment controller has observed every one.
func benchDeployments(t *testing.T, s *harness.Stack, n int, namespaces []string, queueOf func(g int) string) {
	t.Helper()
	t0 := time.Now()
	groups := n / 5
	var wg sync.WaitGroup
	work := make(chan *appsv1.Deployment)
	var mu sync.Mutex
	var createErr error
	for range 16 {
		wg.Go(func() {
			for d := range work {
				if _, err := s.Client.AppsV1().Deployments(d.Namespace).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
					mu.Lock()
					createErr = err
					mu.Unlock()
				}
			}
		})
	}
	for g := range groups {
		ns := namespaces[g%len(namespaces)]
		group := "g" + strconv.Itoa(g)
		for p := 1; p <= 4; p++ {
			d := deployment(ns, fmt.Sprintf("%s-q%d", group, p), 0, map[string]string{
				"microscaling.com/group": group, "microscaling.com/priority": strconv.Itoa(p),
				"microscaling.com/queue":               queueOf(g),
				"microscaling.com/target-queue-length": "50", "microscaling.com/max-replicas": "5"})
			if strings.HasPrefix(queueOf(g), "rabbitmq:") {
				d.Annotations["microscaling.com/queue-secret"] = "rabbit"
			}
			work <- d
		}
		rem := deployment(ns, group+"-rem", 0, map[string]string{"microscaling.com/group": group, "microscaling.com/priority": "9",
			"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "5"})
		rem.Spec.Template.Spec.NodeSelector = map[string]string{"pool": "none"} // fits no node: no pods, full capacity path
		rem.Spec.Template.Spec.PriorityClassName = remainderClass
		work <- rem
	}
	close(work)
	wg.Wait()
	if createErr != nil {
		t.Fatal(createErr)
	}
	t.Logf("%d Deployments created in %s", n, time.Since(t0).Round(time.Second))
	// Steady state: the deployment controller has caught up (a ReplicaSet
	// and a status for each), so the window measures the controller, not the
	// control plane working through 10,000 new Deployments on the same cores.
	t1 := time.Now()
	eventually(t, 5*time.Minute+time.Duration(n)*30*time.Millisecond, func(ctx context.Context) error {
		behind := 0
		for _, ns := range namespaces {
			list, err := s.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
			if err != nil {
				return err
			}
			for _, d := range list.Items {
				if d.Status.ObservedGeneration < d.Generation {
					behind++
				}
			}
		}
		if behind > 0 {
			time.Sleep(2 * time.Second) // a list of 10,000 is not free: poll gently
			return fmt.Errorf("%d Deployments not yet observed by the deployment controller", behind)
		}
		return nil
	})
	t.Logf("deployment controller caught up in %s", time.Since(t1).Round(time.Second))
}

// benchWindow is the measured window: MICROSCALING_SCALE_WINDOW, else def.
func benchWindow(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv("MICROSCALING_SCALE_WINDOW")
	if v == "" {
		return def
	}
	w, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("MICROSCALING_SCALE_WINDOW=%q: %v", v, err)
	}
	return w
}

// settle waits until each of cs has sent the Events and conditions its
// first ticks raised (n members between them), and logs how long that took.
func settle(t *testing.T, n int, cs ...*controller) {
	t.Helper()
	settled := time.Now()
	eventually(t, 5*time.Minute+time.Duration(n)*time.Second/15, func(ctx context.Context) error {
		before := make([]float64, len(cs))
		for i, c := range cs {
			before[i] = eventsSent(scrape(t, c))
		}
		time.Sleep(3 * time.Second) // the sending pace is what is measured
		for i, c := range cs {
			if after := eventsSent(scrape(t, c)); after != before[i] {
				return fmt.Errorf("%.0f Events and conditions sent in 3 s by controller %d", after-before[i], i)
			}
		}
		return nil
	})
	if wait := time.Since(settled); wait > 4*time.Second {
		t.Logf("Events and conditions of the first ticks sent in %s", wait.Round(time.Second))
	}
}

// eventsSent is the Events and conditions the controller has sent, from
// its metrics.
func eventsSent(m map[string]float64) float64 {
	n := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "microscaling_api_requests_total") && (strings.Contains(k, `resource="events"`) || strings.Contains(k, `resource="deployments/status"`)) {
			n += v
		}
	}
	return n
}

// eventReasons counts the Events in namespaces by type and reason.
func eventReasons(t *testing.T, s *harness.Stack, namespaces ...string) string {
	t.Helper()
	n := map[string]int32{}
	for _, ns := range namespaces {
		list, err := s.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			k := e.Type + "/" + e.Reason
			if n[k] == 0 && e.Type == "Warning" {
				t.Logf("%s: %.200s", k, e.Message)
			}
			n[k] += max(e.Count, 1)
		}
	}
	var out []string
	for k, v := range n {
		out = append(out, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// scaleSources starts a RabbitMQ, a Redis, a NATS and a Prometheus server
// beside the stack's nsqd, declares a queue of each for its fifth of the
// groups, and returns each group's queue annotation and the controller's
// extra flags. RabbitMQ is read with a Secret named rabbit in each
// namespace.
func scaleSources(t *testing.T, s *harness.Stack, groups int, namespaces []string) (func(g int) string, []string) {
	mq := harness.StartRabbitMQ(t)
	rd := harness.StartRedis(t)
	nt := harness.StartNATS(t)
	var series strings.Builder
	for g := 4; g < groups; g += 5 {
		fmt.Fprintf(&series, "bench_queue_length{queue=\"g%d\"} 0\nbench_queue_published_total{queue=\"g%d\"} 0\n", g, g)
	}
	exporter := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, series.String())
	}))
	pm := harness.StartPrometheus(t, exporter)
	amqpURL := "amqp://guest:guest@" + mq.Addr + "/"
	for g := 1; g < groups; g += 5 {
		declare(t, amqpURL, "q"+strconv.Itoa(g))
	}
	for g := 3; g < groups; g += 5 {
		if err := workload.DeclareNATS("nats://"+nt.Addr, "S"+strconv.Itoa(g), "s"+strconv.Itoa(g), "c"); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range namespaces {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rabbit"}, StringData: map[string]string{"username": "guest", "password": "guest"}}
		if _, err := s.Client.CoreV1().Secrets(ns).Create(t.Context(), secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Prometheus has scraped the exporter once before the controller reads.
	eventually(t, time.Minute, func(ctx context.Context) error {
		return httpOK(ctx, "http://"+pm.HTTPAddr+"/api/v1/query?query=count(bench_queue_length)%3E0", `"result":[{`)
	})
	t.Logf("sources: rabbitmq %s, redis %s, nats %s, prometheus %s", mq.HTTPAddr, rd.Addr, nt.HTTPAddr, pm.HTTPAddr)
	return func(g int) string {
		switch g % 5 {
		case 1:
			return fmt.Sprintf("rabbitmq://%s/%%2F/q%d", mq.HTTPAddr, g)
		case 2:
			return fmt.Sprintf("redis://%s/l%d", rd.Addr, g)
		case 3:
			return fmt.Sprintf("nats://%s/S%d/c", nt.HTTPAddr, g)
		case 4:
			q := url.Values{"backlog": {fmt.Sprintf(`sum(bench_queue_length{queue="g%d"})`, g)},
				"arrivals": {fmt.Sprintf(`sum(bench_queue_published_total{queue="g%d"})`, g)}}
			return "prometheus://" + pm.HTTPAddr + "?" + q.Encode()
		}
		return fmt.Sprintf("nsq://%s/t%d/c", s.NSQ.HTTPAddr, g)
	}, []string{"--queue-secrets"}
}

// httpOK is nil once a GET of u answers 200 with a body holding want.
func httpOK(ctx context.Context, u, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		return fmt.Errorf("GET %s: %s %.200s", u, resp.Status, b)
	}
	return nil
}

// perTickBy is how much each series of a counter grew per tick, by its
// labels; series that did not grow are left out.
func perTickBy(m0, m1 map[string]float64, ticks float64, counter string) string {
	var out []string
	for k, v := range m1 {
		if labels, ok := strings.CutPrefix(k, counter+"{"); ok && v > m0[k] {
			out = append(out, fmt.Sprintf("%s=%.2f", strings.TrimSuffix(labels, "}"), (v-m0[k])/ticks))
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// scrape reads every sample of the controller's /metrics by its full name.
func scrape(t *testing.T, c *controller) map[string]float64 {
	t.Helper()
	body, err := c.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

type rssStats struct{ median, max float64 }

// procCPU is the user+system CPU seconds the process has used.
func procCPU(t *testing.T, pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// sampleRSS samples the resident set of each of pids once a second for d.
func sampleRSS(t *testing.T, d time.Duration, pids ...int) []rssStats {
	vs := make([][]float64, len(pids))
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for i, pid := range pids {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(status), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
					kb, _ := strconv.ParseFloat(f[1], 64)
					vs[i] = append(vs[i], kb*1024)
				}
			}
		}
		time.Sleep(time.Second) // one sample a second
	}
	out := make([]rssStats, len(pids))
	for i, v := range vs {
		slices.Sort(v)
		out[i] = rssStats{median: v[len(v)/2], max: v[len(v)-1]}
	}
	return out
}

// histQuantile estimates a quantile of a histogram's observations between
// two scrapes, as the upper bound of the bucket it falls in. buckets is the
// series' name up to its le label: name_bucket{ or name_bucket{labels,
func histQuantile(m0, m1 map[string]float64, buckets string, q float64) float64 {
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m1 {
		le, ok := strings.CutPrefix(k, buckets+`le="`)
		if !ok {
			continue
		}
		le = strings.TrimSuffix(le, `"}`)
		f, err := strconv.ParseFloat(le, 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{f, v - m0[k]})
	}
	slices.SortFunc(bs, func(a, b bucket) int {
		if a.le < b.le {
			return -1
		}
		return 1
	})
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return 0
	}
	total := bs[len(bs)-1].n
	for _, b := range bs {
		if b.n >= q*total {
			return b.le
		}
	}
	return bs[len(bs)-1].le
}

// lagBuckets lists how many ticks of the window fell in each histogram bucket.
func lagBuckets(m0, m1 map[string]float64, name string) string {
	type bucket struct {
		le string
		f  float64
		n  float64
	}
	var bs []bucket
	for k, v := range m1 {
		le, ok := strings.CutPrefix(k, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le = strings.TrimSuffix(le, `"}`)
		f, _ := strconv.ParseFloat(le, 64)
		bs = append(bs, bucket{le, f, v - m0[k]})
	}
	slices.SortFunc(bs, func(a, b bucket) int {
		if a.f < b.f {
			return -1
		}
		return 1
	})
	var out []string
	prev := 0.0
	for _, b := range bs {
		if b.n > prev {
			out = append(out, fmt.Sprintf("<=%sms:%.0f", strconv.FormatFloat(b.f*1000, 'g', 3, 64), b.n-prev))
		}
		prev = b.n
	}
	return strings.Join(out, " ")
}
