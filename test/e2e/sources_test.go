package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// sourceCase is one queue server for TestSourcesCloseTheLoop: started, its
// queue declared, and what the run needs to use it.
type sourceCase struct {
	server *harness.Server
	// queue is the microscaling.com/queue annotation.
	queue string
	// secret, when set, is the Secret the controller reads the queue with;
	// wrong is the same Secret with a wrong password, for the Deployment
	// that must be told so.
	secret, wrong map[string]string
	connect       func(pod string, handle func([]byte)) (func(), error)
	publish       func(n int) error
	// counted: the queue counts arrivals (rates are learnt); otherwise the
	// rule sizes from the backlog alone.
	counted bool
	// shown, when set, is the backlog the server publishes now, for servers
	// that publish it late (RabbitMQ's management figures move in 5 s
	// steps, Prometheus's with its scrapes): the reaction counts from when
	// it shows the burst.
	shown func(ctx context.Context) (int64, error)
}

// sourcePassword is the password of every server's reading user.
var sourcePassword = harness.QueueUser.Password

// TestSourcesCloseTheLoop closes the loop on every queue source beside NSQ,
// each with its real server on 127.0.0.1 and real consumers made with that
// queue's own client library, one per Running pod at 10 msg/s: the real
// controller, API server, scheduler, controller-manager and kwok nodes.
// Two 1-CPU nodes leave room for 10 pods of 200m, shared by a consumer
// (priority 1, target 40, min 1, max 10) and a remainder.
//
// What a user sees, for each source:
//   - the remainder fills the spare room;
//   - a burst of 1,000 messages and 40 msg/s after it take the consumer to
//     the 4 replicas the load needs within 3 s of the burst, the remainder
//     yielding its room;
//   - while the load is steady, no shrink is taken back (queues that count
//     arrivals; a queue without an arrival count is sized from its backlog
//     alone and its reversals are logged: that is the cost docs/annotations.md
//     tells);
//   - the server stopped: the consumer holds its replicas with a
//     QueueUnreadable Event, and is read again (QueueReadable) once the
//     server is back;
//   - once the load is gone the consumer goes back and the remainder takes
//     the room again;
//   - a Deployment naming a Secret with a wrong password gets a Warning that
//     says the credentials were refused, and no Event nor log line holds a
//     password.
func TestSourcesCloseTheLoop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) sourceCase
	}{
		{"rabbitmq", startRabbitMQCase},
		{"redis-list", func(t *testing.T) sourceCase {
			rd := harness.StartRedis(t, "--requirepass", sourcePassword)
			publish, stop := workload.PublishRedisList(t.Context(), rd.Addr, sourcePassword, "jobs")
			t.Cleanup(stop)
			return sourceCase{server: rd, queue: "redis://" + rd.Addr + "/jobs",
				secret: map[string]string{"password": sourcePassword}, wrong: map[string]string{"password": "not-" + sourcePassword},
				connect: workload.RedisList(rd.Addr, sourcePassword, "jobs"), publish: publish}
		}},
		{"redis-stream", func(t *testing.T) sourceCase {
			rd := harness.StartRedis(t, "--requirepass", sourcePassword)
			if err := workload.DeclareRedisStream(t.Context(), rd.Addr, sourcePassword, "events", "workers"); err != nil {
				t.Fatal(err)
			}
			publish, stop := workload.PublishRedisStream(t.Context(), rd.Addr, sourcePassword, "events")
			t.Cleanup(stop)
			return sourceCase{server: rd, queue: "redis://" + rd.Addr + "/events?group=workers",
				secret: map[string]string{"password": sourcePassword}, wrong: map[string]string{"password": "not-" + sourcePassword},
				connect: workload.RedisStream(rd.Addr, sourcePassword, "events", "workers"), publish: publish, counted: true}
		}},
		{"nats-jetstream", func(t *testing.T) sourceCase {
			ns := harness.StartNATS(t)
			url := "nats://" + ns.Addr
			if err := workload.DeclareNATS(url, "ORDERS", "orders.>", "worker"); err != nil {
				t.Fatal(err)
			}
			publish, stop, err := workload.PublishNATS(url, "orders.new")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			return sourceCase{server: ns, queue: "nats://" + ns.HTTPAddr + "/ORDERS/worker",
				connect: workload.NATS(url, "ORDERS", "worker"), publish: publish, counted: true}
		}},
		{"prometheus", func(t *testing.T) sourceCase {
			// A Redis list seen through an exporter: its length, and the
			// producer's count of what it sent.
			rd := harness.StartRedis(t)
			ex := workload.ExportRedisList(rd.Addr, "", "jobs")
			exporter := serve(t, ex.Handler)
			// Prometheus answers one user (basic authentication).
			pm := harness.StartPrometheusWithUser(t, exporter)
			publish, stop := workload.PublishRedisList(t.Context(), rd.Addr, "", "jobs")
			t.Cleanup(stop)
			return sourceCase{server: pm, queue: "prometheus://" + pm.HTTPAddr + "?backlog=demo_queue_length&arrivals=demo_queue_published_total",
				secret:  map[string]string{"username": harness.QueueUser.Name, "password": sourcePassword},
				wrong:   map[string]string{"username": harness.QueueUser.Name, "password": "not-" + sourcePassword},
				connect: workload.RedisList(rd.Addr, "", "jobs"), publish: ex.Publish(publish), counted: true,
				shown: func(ctx context.Context) (int64, error) { return promBacklog(ctx, pm.HTTPAddr, "demo_queue_length") }}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { sourceLoop(t, tc.start(t)) })
	}
}

func startRabbitMQCase(t *testing.T) sourceCase {
	mq := harness.StartRabbitMQ(t)
	addUser(t, mq.HTTPAddr, "scaler", sourcePassword)
	amqpURL := "amqp://guest:guest@" + mq.Addr + "/"
	declare(t, amqpURL, "orders")
	publish, stop, err := workload.PublishRabbitMQ(t.Context(), amqpURL, "orders")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	shown := func(ctx context.Context) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mq.HTTPAddr+"/api/queues/%2F/orders", nil)
		if err != nil {
			return 0, err
		}
		req.SetBasicAuth("guest", "guest")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var q struct {
			Messages int64 `json:"messages"`
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET queue: %s", resp.Status)
		}
		err = json.NewDecoder(resp.Body).Decode(&q)
		return q.Messages, err
	}
	return sourceCase{server: mq, queue: "rabbitmq://" + mq.HTTPAddr + "/%2F/orders", shown: shown,
		secret:  map[string]string{"username": "scaler", "password": sourcePassword},
		wrong:   map[string]string{"username": "scaler", "password": "not-" + sourcePassword},
		connect: workload.RabbitMQ(amqpURL, "orders", 2), publish: publish, counted: true}
}

// promBacklog is the value Prometheus answers for query now, as the
// harness's user: Prometheus shows a burst only once it has scraped the
// exporter (every second).
func promBacklog(ctx context.Context, addr, query string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/v1/query?query="+url.QueryEscape(query), nil)
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(harness.QueueUser.Name, harness.QueueUser.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", req.URL.Path, resp.Status)
	}
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("decoding the answer to %q: %w", query, err)
	}
	if len(r.Data.Result) != 1 {
		return 0, fmt.Errorf("%q answered %d series, want 1", query, len(r.Data.Result))
	}
	v, ok := r.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("%q answered a value that is not a string: %v", query, r.Data.Result[0].Value[1])
	}
	f, err := strconv.ParseFloat(v, 64)
	return int64(f), err
}

// sourceLoop runs the scenario of TestSourcesCloseTheLoop on one source.
func sourceLoop(t *testing.T, sc sourceCase) {
	s := harness.StartT(t, harness.Options{Nodes: []harness.Node{{Name: "n1", CPU: "1", Memory: "8Gi"}, {Name: "n2", CPU: "1", Memory: "8Gi"}}})
	ann := map[string]string{"microscaling.com/queue": sc.queue, "microscaling.com/group": "demo", "microscaling.com/priority": "1",
		"microscaling.com/target-queue-length": "40", "microscaling.com/min-replicas": "1", "microscaling.com/max-replicas": "10",
		"microscaling.com/scale-down-delay": "10s"}
	if sc.secret != nil {
		ann["microscaling.com/queue-secret"] = "queue-reader"
		makeSecret(t, s, "queue-reader", sc.secret)
		// Another team's Deployment on the same queue with a wrong password:
		// no replicas, so it takes no room from the group.
		makeSecret(t, s, "wrong-reader", sc.wrong)
		create(t, s, deployment("default", "misread", 0, map[string]string{"microscaling.com/queue": sc.queue,
			"microscaling.com/queue-secret": "wrong-reader", "microscaling.com/target-queue-length": "40",
			"microscaling.com/min-replicas": "0", "microscaling.com/max-replicas": "3"}, "200m"))
	}
	create(t, s, deployment("default", "consumer", 1, ann, "200m"))
	create(t, s, deployment("default", "background", 0, map[string]string{"microscaling.com/group": "demo",
		"microscaling.com/priority": "2", "microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "20"}, "200m"))
	c := startController(t, s.Kubeconfig, "--queue-secrets")
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer",
		PerMessage: 100 * time.Millisecond, Connect: sc.connect})
	waitReplicas(t, s, "default", "background", 30*time.Second, "9 (the spare room)", func(n int32) bool { return n == 9 })

	// The burst and the steady load, the replicas of both sampled.
	var (
		rec      groupRecord
		mu       sync.Mutex
		arrivals bool
	)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	start := time.Now()
	wg.Go(func() { rec.record(ctx, t, s, start) })
	wg.Go(func() {
		watchState(ctx, t, c, time.Second, func(m dashboard.MemberHistory) {
			if m.Name == "consumer" && m.Status.ArrivalKnown {
				mu.Lock()
				arrivals = true
				mu.Unlock()
			}
		})
	})
	if err := sc.publish(1000); err != nil {
		t.Fatal(err)
	}
	burst := time.Since(start)
	const load, steadyFrom = 50 * time.Second, 30 * time.Second
	pctx, pcancel := context.WithDeadline(t.Context(), start.Add(load))
	defer pcancel()
	paced := make(chan struct{})
	go func() {
		defer close(paced)
		workload.Pace(pctx, func(time.Duration) float64 { return 40 }, sc.publish)
	}()
	appear := burst
	if sc.shown != nil {
		appear = shownAt(t, sc.shown, start)
	}
	<-pctx.Done()

	// The server goes away as the load ends: the consumer holds what it has.
	sc.server.Stop()
	<-paced
	stopped := time.Since(start)
	// A server shutting down may answer for a while yet (RabbitMQ does for
	// seconds): the outage starts when the controller finds it gone.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		st, err := memberStatus(ctx, c, "consumer")
		if err == nil && st.BacklogKnown {
			err = fmt.Errorf("the consumer's queue is still read (backlog %d)", st.Backlog)
		}
		return err
	})
	held, outage := rec.last().consumer, time.Since(start)
	eventually(t, 10*time.Second, func(ctx context.Context) error { // Events are sent in the background
		return hasEvent(ctx, s, "consumer", "Warning QueueUnreadable")
	})
	// Nothing may move for longer than the scale-down delay (10 s).
	<-time.After(15 * time.Second)
	if got := rec.since(outage); slices.ContainsFunc(got, func(g groupSample) bool { return g.consumer != held }) {
		t.Errorf("while the queue could not be read the consumer moved from %d replicas: %v", held, got)
	}
	sc.server.Restart(t)
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		st, err := memberStatus(ctx, c, "consumer")
		if err == nil && !st.BacklogKnown {
			err = fmt.Errorf("the consumer's queue is not read again yet")
		}
		if err == nil {
			err = hasEvent(ctx, s, "consumer", "Normal QueueReadable")
		}
		return err
	})

	// The load gone, the consumer goes back and the remainder refills.
	waitReplicas(t, s, "default", "consumer", 3*time.Minute, "2 or fewer once the load is gone", func(n int32) bool { return n <= 2 })
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		cr, err := replicas(ctx, s, "default", "consumer")
		if err != nil {
			return err
		}
		br, err := replicas(ctx, s, "default", "background")
		if err != nil {
			return err
		}
		if cr+br != 10 {
			return fmt.Errorf("consumer %d + background %d, want the remainder to take the room back (10 pods)", cr, br)
		}
		return nil
	})
	cancel()
	wg.Wait()

	res := rec.score(4, stopped, steadyFrom)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("SOURCE %s: burst sent in %.1f s, shown at %.1f s; 4 replicas at %.1f s; peak %d replicas (remainder down to %d); reversals while steady %d; replica-seconds %.0f (%.2fx the work, 1000/10 + %d s x 4); held %d while unreadable; arrivals counted %v",
		t.Name(), burst.Seconds(), appear.Seconds(), res.toNeeded.Seconds(), res.peak, res.remainderLow, res.reversals, res.replicaSeconds,
		res.replicaSeconds/(100+4*stopped.Seconds()), int(stopped.Seconds()), held, arrivals)
	if res.toNeeded < 0 || res.toNeeded-appear > 3*time.Second {
		t.Errorf("the consumer reached the 4 replicas the load needs at %.1f s, more than 3 s after the server showed the burst (%.1f s)", res.toNeeded.Seconds(), appear.Seconds())
	}
	if res.remainderLow >= 9 {
		t.Errorf("the remainder never yielded its room (lowest %d)", res.remainderLow)
	}
	if res.overRoom > 0 {
		t.Errorf("the group asked for more than the 10 pods of room in %d samples", res.overRoom)
	}
	if sc.counted && res.reversals > 0 {
		t.Errorf("%d shrinks taken back while the load was steady", res.reversals)
	}
	if arrivals != sc.counted {
		t.Errorf("arrival rate known: %v, want %v", arrivals, sc.counted)
	}
	if sc.secret != nil {
		waitEventMatching(t, s, "misread", "Warning QueueUnreadable", "refused")
		all := append(mustEvents(t, s, "default", "misread"), mustEvents(t, s, "default", "consumer")...)
		for _, e := range append(all, c.log.String()) {
			if strings.Contains(e, sourcePassword) {
				t.Errorf("a password shows in an Event or the controller's log: %.300s", e)
			}
		}
	}
}

// groupRecord samples the replicas of the consumer and the remainder.
type groupRecord struct {
	mu      sync.Mutex
	samples []groupSample
}

type groupSample struct {
	at                   time.Duration
	consumer, background int32
}

func (r *groupRecord) record(ctx context.Context, t *testing.T, s *harness.Stack, start time.Time) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cr, err := replicas(ctx, s, "default", "consumer")
		br, berr := replicas(ctx, s, "default", "background")
		if ctx.Err() != nil {
			return
		}
		if err != nil || berr != nil {
			t.Errorf("sampling replicas: %v, %v", err, berr)
			return
		}
		r.mu.Lock()
		r.samples = append(r.samples, groupSample{at: time.Since(start), consumer: cr, background: br})
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *groupRecord) last() groupSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) == 0 {
		return groupSample{}
	}
	return r.samples[len(r.samples)-1]
}

func (r *groupRecord) since(from time.Duration) []groupSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearchFunc(r.samples, from, func(s groupSample, d time.Duration) int { return int(s.at - d) })
	return slices.Clone(r.samples[i:])
}

type groupScore struct {
	toNeeded       time.Duration // first sample with the consumer at needed or more; -1: never
	peak           int32
	remainderLow   int32
	overRoom       int // samples with more than 10 pods asked for, the writes of one decision apart
	reversals      int
	replicaSeconds float64 // the consumer's, over the load
}

// score scores the samples up to load; reversals count from steadyFrom.
func (r *groupRecord) score(needed int32, load, steadyFrom time.Duration) groupScore {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := groupScore{toNeeded: -1, remainderLow: 1 << 30}
	var lastDir int
	over := 0
	for i, sm := range r.samples {
		if sm.at > load {
			break
		}
		if res.toNeeded < 0 && sm.consumer >= needed {
			res.toNeeded = sm.at
		}
		res.peak = max(res.peak, sm.consumer)
		res.remainderLow = min(res.remainderLow, sm.background)
		// One decision writes the remainder down and the consumer up a
		// moment apart; a sample between them is no fault, two in a row are.
		if sm.consumer+sm.background > 10 {
			over++
			if over > 1 {
				res.overRoom++
			}
		} else {
			over = 0
		}
		if i == 0 {
			continue
		}
		prev := r.samples[i-1]
		res.replicaSeconds += float64(prev.consumer) * (sm.at - prev.at).Seconds()
		if sm.consumer != prev.consumer && sm.at >= steadyFrom {
			dir := 1
			if sm.consumer < prev.consumer {
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

// shownAt polls the backlog a server publishes until it shows one, and
// returns when that was, from start.
func shownAt(t *testing.T, shown func(context.Context) (int64, error), start time.Time) time.Duration {
	t.Helper()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		n, err := shown(ctx)
		if err == nil && n == 0 {
			err = errors.New("the server shows no backlog yet")
		}
		return err
	})
	return time.Since(start)
}

// memberStatus is a Deployment's status in the controller's /api/state.
func memberStatus(ctx context.Context, c *controller, name string) (dashboard.Status, error) {
	body, err := c.get(ctx, "/api/state")
	if err != nil {
		return dashboard.Status{}, err
	}
	var st dashboard.State
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return dashboard.Status{}, fmt.Errorf("decoding /api/state: %w", err)
	}
	for _, m := range st.Members {
		if m.Namespace == "default" && m.Name == name {
			return m.Status, nil
		}
	}
	return dashboard.Status{}, fmt.Errorf("%s is not in /api/state", name)
}

// serve serves h on a free 127.0.0.1 port until the test ends; it returns
// host:port.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }() // returns ErrServerClosed once closed below
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return l.Addr().String()
}

func makeSecret(t *testing.T, s *harness.Stack, name string, data map[string]string) {
	t.Helper()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, StringData: data}
	if _, err := s.Client.CoreV1().Secrets("default").Create(t.Context(), secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// hasEvent is nil once an Event of the Deployment starts with prefix
// ("Type Reason").
func hasEvent(ctx context.Context, s *harness.Stack, name, prefix string) error {
	evs, err := events(ctx, s, "default", name)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(evs, func(e string) bool { return strings.HasPrefix(e, prefix) }) {
		return nil
	}
	return fmt.Errorf("no %q Event on %s; events: %q", prefix, name, evs)
}

// waitEventMatching waits for an Event of the Deployment that starts with
// prefix and holds substr.
func waitEventMatching(t *testing.T, s *harness.Stack, name, prefix, substr string) {
	t.Helper()
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		evs, err := events(ctx, s, "default", name)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(evs, func(e string) bool { return strings.HasPrefix(e, prefix) && strings.Contains(e, substr) }) {
			return nil
		}
		return fmt.Errorf("no %q Event on %s saying %q; events: %q", prefix, name, substr, evs)
	})
}

// addUser creates a RabbitMQ user that may read the management API, and
// nothing else, through the management API as guest.
func addUser(t *testing.T, httpAddr, user, password string) {
	t.Helper()
	for _, r := range []struct{ path, body string }{
		{"/api/users/" + user, fmt.Sprintf(`{"password":%q,"tags":"monitoring"}`, password)},
		{"/api/permissions/%2F/" + user, `{"configure":"","write":"","read":""}`},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, "http://"+httpAddr+r.path, strings.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth("guest", "guest")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("PUT %s: HTTP %d", r.path, resp.StatusCode)
		}
	}
}

// declare declares a durable queue.
func declare(t *testing.T, amqpURL, queue string) {
	t.Helper()
	if err := workload.DeclareRabbitMQ(amqpURL, queue); err != nil {
		t.Fatal(err)
	}
}
