package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// TestHostileQueueEndpoints: one tenant points its queues at an address the
// operator's --queue-allow does not list, at an nsqd answering a 10 MB
// /stats, and at the shared nsqlookupd's port as if it were an nsqd; the
// first is never contacted, each is reported as a class with no byte of any
// answer, and another tenant's group, reading the same topic through that
// nsqlookupd, keeps scaling.
func TestHostileQueueEndpoints(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	var internalHits atomic.Int64
	internal := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		internalHits.Add(1)
		_, _ = w.Write([]byte(`{"topics":[]}`))
	}))
	l, err := net.Listen("tcp", "127.0.0.3:0") // loopback, but not in the allow-list
	if err != nil {
		t.Fatal(err)
	}
	internal.Listener = l
	internal.Start()
	defer internal.Close()
	var huge strings.Builder
	huge.WriteString(`{"topics":[`)
	for i := 0; huge.Len() < 10<<20; i++ {
		fmt.Fprintf(&huge, `{"topic_name":"secret-%d","depth":1,"channels":[]},`, i)
	}
	huge.WriteString(`{"topic_name":"t","depth":1}]}`)
	hugeBody := []byte(huge.String())
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(hugeBody) }))
	defer big.Close()

	for _, ns := range []string{"attacker", "victim"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
	}
	host := func(u string) string { return strings.TrimPrefix(u, "http://") }
	create(t, s, deployment("attacker", "internal", 1, map[string]string{
		"microscaling.com/queue": "nsq://" + host(internal.URL) + "/t/c", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	create(t, s, deployment("attacker", "huge", 1, map[string]string{
		"microscaling.com/queue": "nsq://" + host(big.URL) + "/t/c", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	create(t, s, deployment("attacker", "lookupd", 1, map[string]string{
		"microscaling.com/queue": "nsq://" + s.NSQ.LookupdHTTPAddr + "/jobs/work", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("victim", "consumer", 1, map[string]string{
		"microscaling.com/queue": "nsqlookupd://" + s.NSQ.LookupdHTTPAddr + "/jobs/work", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	startController(t, s.Kubeconfig, "--queue-allow=127.0.0.1/32", "--queue-max-bytes=1048576", "--queue-timeout=3s")

	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "victim", "consumer", 10*time.Second, "> 1", func(n int32) bool { return n > 1 })
	waitEvent(t, s, "attacker", "internal", "Warning QueueUnreadable", 10*time.Second)
	waitEvent(t, s, "attacker", "huge", "Warning QueueUnreadable", 10*time.Second)
	waitEvent(t, s, "attacker", "lookupd", "Warning QueueUnreadable", 10*time.Second)
	for name, class := range map[string]string{"internal": "address not allowed by the queue endpoint policy", "huge": "answer too large", "lookupd": "HTTP 404"} {
		for _, e := range mustEvents(t, s, "attacker", name) {
			if strings.Contains(e, "topic") || strings.Contains(e, "secret") {
				t.Errorf("%s: an Event quotes an answer: %s", name, e)
			}
			if strings.HasPrefix(e, "Warning QueueUnreadable") && !strings.Contains(e, class) {
				t.Errorf("%s: %q does not say %q", name, e, class)
			}
		}
		if n := mustReplicas(t, s, "attacker", name); n != 1 {
			t.Errorf("attacker/%s has %d replicas, want 1 (held)", name, n)
		}
	}
	if n := internalHits.Load(); n != 0 {
		t.Errorf("the address outside --queue-allow got %d requests, want none", n)
	}
}

// TestRemainderPriority: a remainder whose pods would run at priority 0
// (no PriorityClass) or above is not grown, with one Warning saying why; one
// under a negative PriorityClass fills the room.
func TestRemainderPriority(t *testing.T) {
	s := harness.StartT(t, harness.Options{Nodes: []harness.Node{{Name: "n1", CPU: "2", Memory: "8Gi"}}})
	high := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "high"}, Value: 1000}
	if _, err := s.Client.SchedulingV1().PriorityClasses().Create(t.Context(), high, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rem := func(name, class string) *appsv1.Deployment {
		d := deployment("default", name, 0, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"})
		d.Spec.Template.Spec.PriorityClassName = class
		return d
	}
	for _, d := range []*appsv1.Deployment{rem("none", ""), rem("high", "high")} {
		if _, err := s.Client.AppsV1().Deployments("default").Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create(t, s, deployment("default", "low", 0, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
	startController(t, s.Kubeconfig)
	waitReplicas(t, s, "default", "low", 15*time.Second, "3", func(n int32) bool { return n == 3 })
	waitEvent(t, s, "default", "none", "Warning RemainderPriority: not growing: its pods would run at priority 0 (no PriorityClass)", 5*time.Second)
	waitEvent(t, s, "default", "high", "Warning RemainderPriority: not growing: its pods would run at priority 1000 (PriorityClass high)", 5*time.Second)
	for _, name := range []string{"none", "high"} {
		if n := mustReplicas(t, s, "default", name); n != 0 {
			t.Errorf("%s grew to %d", name, n)
		}
		warned := 0
		for _, e := range mustEvents(t, s, "default", name) {
			if strings.HasPrefix(e, "Warning RemainderPriority") {
				warned++
			}
		}
		if warned != 1 {
			t.Errorf("%s: %d RemainderPriority Warnings, want one while it lasts", name, warned)
		}
	}
}
