package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microscaling/microscaling/test/harness"
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

	// The neighbours: hosts that hang, and a hanging lookupd with 256 topics.
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
	// The controller reaches them: their reads time out.
	waitEvent(t, s, "hung-hosts", "hung-31", "Warning QueueUnreadable", 30*time.Second)
	waitEvent(t, s, "hung-lookupd", "topic-0", "Warning QueueUnreadable", 30*time.Second)
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
