package e2e

import (
	"context"
	"fmt"
	"net/http"
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

// TestOtherQueuesScale closes the loop on queues other than NSQ: the real
// controller, the real API server and kwok nodes, a real queue server, and
// one real consumer per Running pod (10 msg/s each). A load of 40 msg/s for
// a minute must take the consumer to the 4 replicas it needs with the
// backlog held, and the replicas must go back once it stops.
//
//   - RabbitMQ, read through the management API with credentials from the
//     Deployment's own Secret (--queue-secrets): rates are learnt from the
//     published counter. The password never shows in the controller's log
//     nor in any Event.
//   - A Redis list behind a password: no arrivals are counted, so the rule
//     sizes from the backlog alone.
func TestOtherQueuesScale(t *testing.T) {
	const password = "Pa55-not-for-logs"
	t.Run("rabbitmq", func(t *testing.T) {
		mq := harness.StartRabbitMQ(t)
		addUser(t, mq.HTTPAddr, "scaler", password)
		s := harness.StartT(t, harness.Options{Nodes: bigNodes})
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "rabbit-reader"},
			StringData: map[string]string{"username": "scaler", "password": password}}
		if _, err := s.Client.CoreV1().Secrets("default").Create(t.Context(), secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		amqpURL := "amqp://guest:guest@" + mq.Addr + "/"
		declare(t, amqpURL, "orders")
		publish, stop, err := workload.PublishRabbitMQ(t.Context(), amqpURL, "orders")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		c := sourceRun(t, s, map[string]string{
			"microscaling.com/queue":        "rabbitmq://" + mq.HTTPAddr + "/%2F/orders",
			"microscaling.com/queue-secret": "rabbit-reader",
		}, workload.RabbitMQ(amqpURL, "orders", 2), publish, true, "--queue-secrets")
		if strings.Contains(c.log.String(), password) {
			t.Errorf("the controller's log holds the queue password")
		}
		for _, e := range mustEvents(t, s, "default", "consumer") {
			if strings.Contains(e, password) {
				t.Errorf("an Event holds the queue password: %s", e)
			}
		}
	})
	t.Run("redis-list", func(t *testing.T) {
		rd := harness.StartRedis(t, "--requirepass", password)
		s := harness.StartT(t, harness.Options{Nodes: bigNodes})
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "redis-reader"},
			StringData: map[string]string{"password": password}}
		if _, err := s.Client.CoreV1().Secrets("default").Create(t.Context(), secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		publish, stop := workload.PublishRedisList(t.Context(), rd.Addr, password, "jobs")
		defer stop()
		sourceRun(t, s, map[string]string{
			"microscaling.com/queue":        "redis://" + rd.Addr + "/jobs",
			"microscaling.com/queue-secret": "redis-reader",
		}, workload.RedisList(rd.Addr, password, "jobs"), publish, false, "--queue-secrets")
	})
}

// sourceRun creates the consumer (target 40, scale-down delay 10 s), runs
// the controller and the consumers, sends 40 msg/s for 60 s, and checks
// what a user sees: the replicas reach 4, the backlog stays bounded, rates
// are known when the queue counts arrivals, and the replicas go back once
// the load stops.
func sourceRun(t *testing.T, s *harness.Stack, ann map[string]string, connect func(string, func([]byte)) (func(), error),
	publish func(int) error, rates bool, args ...string) *controller {
	t.Helper()
	ann["microscaling.com/target-queue-length"] = "40"
	ann["microscaling.com/min-replicas"] = "1"
	ann["microscaling.com/max-replicas"] = "12"
	ann["microscaling.com/scale-down-delay"] = "10s"
	create(t, s, deployment("default", "consumer", 1, ann, "10m"))
	c := startController(t, s.Kubeconfig, args...)
	runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: "default", Selector: "app=consumer",
		PerMessage: 100 * time.Millisecond, Connect: connect})

	var (
		mu                   sync.Mutex
		peakBacklog          int64
		peakReplicas         int32
		arrivalKnown, unread bool
	)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		watchState(ctx, t, c, time.Second, func(m dashboard.MemberHistory) {
			mu.Lock()
			defer mu.Unlock()
			if !m.Status.BacklogKnown {
				unread = true
				return
			}
			peakBacklog = max(peakBacklog, m.Status.Backlog)
			peakReplicas = max(peakReplicas, m.Status.Replicas)
			arrivalKnown = arrivalKnown || m.Status.ArrivalKnown
		})
	})
	defer func() { cancel(); wg.Wait() }()
	pctx, pcancel := context.WithTimeout(t.Context(), 60*time.Second)
	workload.Pace(pctx, func(time.Duration) float64 { return 40 }, publish)
	pcancel()
	mu.Lock()
	t.Logf("SOURCE %s: peak replicas %d, peak backlog %d, arrival rate known %v", t.Name(), peakReplicas, peakBacklog, arrivalKnown)
	if peakReplicas < 4 {
		t.Errorf("the consumer peaked at %d replicas, want the 4 that 40 msg/s at 10 msg/s a replica needs", peakReplicas)
	}
	// The backlog stays within 20 s of the load over the target (RabbitMQ's
	// figures are up to 5 s old).
	if bound := int64(40 + 20*40); peakBacklog > bound {
		t.Errorf("the backlog reached %d, over %d", peakBacklog, bound)
	}
	if arrivalKnown != rates {
		t.Errorf("arrival rate known: %v, want %v", arrivalKnown, rates)
	}
	if unread {
		t.Logf("the queue was unreadable at some tick (a server's first figures)")
	}
	peak := peakReplicas
	mu.Unlock()
	waitReplicas(t, s, "default", "consumer", 3*time.Minute, "fewer replicas once the load stops", func(n int32) bool { return n < peak && n <= 2 })
	return c
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
