package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/informer"
	"github.com/microscaling/microscaling/scaler/egress"
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

// TestCloudMetadataRefused: with every network allowed and "localhost"
// allowed as a DNS suffix, the instance metadata address of every major
// cloud (IPv4 and IPv6) and the API server itself, named through a suffix
// the operator allows (as an ExternalName Service would resolve), are never
// dialed: each member is told its address is not allowed, while a queue
// named by an allowed name on an allowed address is read.
func TestCloudMetadataRefused(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	if _, err := s.Kubectl(t.Context(), "create", "namespace", "attacker"); err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(s.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{
		"link-local":     "169.254.169.254:80", // AWS, Google Cloud, Azure, Oracle, OpenStack, DigitalOcean...
		"ecs":            "169.254.170.2:80",
		"tencent":        "169.254.0.23:80",
		"aws-v6":         "[fd00:ec2::254]:80",
		"gcp-v6":         "[fd20:ce::254]:80",
		"azure-wire":     "168.63.129.16:80",
		"alibaba":        "100.100.100.200:80",
		"oracle":         "192.0.0.192:80",
		"apiserver-name": "localhost:" + api.Port(), // the API server, by a name the suffix allows
	}
	for name, hostPort := range targets {
		create(t, s, deployment("attacker", name, 1, map[string]string{
			"microscaling.com/queue": "nsq://" + hostPort + "/jobs/work", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	}
	_, nsqdPort, err := net.SplitHostPort(s.NSQ.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, map[string]string{
		"microscaling.com/queue": "nsq://localhost:" + nsqdPort + "/jobs/work", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}))
	startController(t, s.Kubeconfig, "--queue-allow=0.0.0.0/0,::/0,localhost")

	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "> 1", func(n int32) bool { return n > 1 })
	for name, hostPort := range targets {
		waitEvent(t, s, "attacker", name, "Warning QueueUnreadable", 10*time.Second)
		for _, e := range mustEvents(t, s, "attacker", name) {
			if strings.HasPrefix(e, "Warning QueueUnreadable") && !strings.Contains(e, "address not allowed by the queue endpoint policy") {
				t.Errorf("%s (%s): %q does not say the address is not allowed", name, hostPort, e)
			}
		}
		if n := mustReplicas(t, s, "attacker", name); n != 1 {
			t.Errorf("attacker/%s has %d replicas, want 1 (held)", name, n)
		}
	}
}

// TestQueuesKeptInTheirNamespace: with --queue-same-namespace, a tenant
// naming another namespace's in-cluster nsqd, or a bare Service name (which
// would resolve in the controller's namespace), is told so and left alone;
// its own namespace's Service name passes the rule and is read (here it
// cannot resolve: no cluster DNS); a queue named by address scales.
func TestQueuesKeptInTheirNamespace(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	if _, err := s.Kubectl(t.Context(), "create", "namespace", "attacker"); err != nil {
		t.Fatal(err)
	}
	queue := func(host string) map[string]string {
		return map[string]string{"microscaling.com/queue": "nsq://" + host + "/jobs/work", "microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "5"}
	}
	create(t, s, deployment("attacker", "cross", 1, queue("nsqd.victim.svc.cluster.local:4151")))
	create(t, s, deployment("attacker", "bare", 1, queue("nsqd:4151")))
	create(t, s, deployment("attacker", "own", 1, queue("nsqd.attacker.svc.cluster.local:4151")))
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queue(s.NSQ.HTTPAddr)))
	startController(t, s.Kubeconfig, "--queue-same-namespace", "--queue-allow=127.0.0.1/32,svc.cluster.local")

	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "> 1", func(n int32) bool { return n > 1 })
	waitEvent(t, s, "attacker", "cross", "Warning InvalidAnnotation: microscaling.com/queue", 10*time.Second)
	waitEvent(t, s, "attacker", "cross", "queues in other namespaces are not read", time.Second)
	waitEvent(t, s, "attacker", "bare", "a bare name resolves in the controller's namespace", 10*time.Second)
	waitEvent(t, s, "attacker", "own", "Warning QueueUnreadable", 10*time.Second)
	for _, e := range mustEvents(t, s, "attacker", "own") {
		if strings.Contains(e, "InvalidAnnotation") {
			t.Errorf("own: its own namespace's Service was refused: %s", e)
		}
	}
	for _, name := range []string{"cross", "bare", "own"} {
		if n := mustReplicas(t, s, "attacker", name); n != 1 {
			t.Errorf("attacker/%s has %d replicas, want 1 (left alone)", name, n)
		}
	}
}

// TestAPIServerEndpointsFollowed: the EndpointSlices of default/kubernetes,
// where a cluster lists the API server's real endpoints behind its Service
// address, are followed into the addresses refused to tenants as they are
// created, changed and deleted on the real API server. (This API server
// listens on loopback, which an EndpointSlice may not list, so it publishes
// none of its own: the test writes the slice as a control plane would.)
func TestAPIServerEndpointsFollowed(t *testing.T) {
	s := harness.StartT(t, harness.Options{})
	inf, err := informer.New(s.Client, "", informer.Shard{})
	if err != nil {
		t.Fatal(err)
	}
	denied := egress.NewDenied()
	if err := inf.WatchAPIServer(s.Client, denied.SetLive); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer func() { cancel(); inf.Shutdown() }()
	if !inf.Run(ctx) {
		t.Fatal("caches never synced")
	}
	refused := func(ap string) bool { return denied.Check(netip.MustParseAddrPort(ap), "") != nil }
	expect := func(step string, want map[string]bool) {
		t.Helper()
		eventually(t, 10*time.Second, func(context.Context) error {
			for ap, w := range want {
				if refused(ap) != w {
					return fmt.Errorf("%s: %s refused %v, want %v (live: %v)", step, ap, !w, w, denied.Live())
				}
			}
			return nil
		})
	}
	expect("before any slice", map[string]bool{"192.0.2.10:6443": false})

	port, proto := int32(6443), corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.10"}}},
		Ports:       []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto}},
	}
	slices := s.Client.DiscoveryV1().EndpointSlices("default")
	created, err := slices.Create(t.Context(), slice, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	expect("listed", map[string]bool{"192.0.2.10:6443": true, "192.0.2.10:4151": false, "192.0.2.11:6443": false})

	// A control-plane node replaced: the old address is a tenant's again.
	created.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.11"}}}
	if _, err := slices.Update(t.Context(), created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("moved", map[string]bool{"192.0.2.10:6443": false, "192.0.2.11:6443": true})

	// Another Service's slice in default is not the API server's.
	other := slice.DeepCopy()
	other.Name, other.Labels = "other", map[string]string{discoveryv1.LabelServiceName: "other"}
	other.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.20"}}}
	if _, err := slices.Create(t.Context(), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := slices.Delete(t.Context(), slice.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("deleted", map[string]bool{"192.0.2.11:6443": false, "192.0.2.20:6443": false})
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
