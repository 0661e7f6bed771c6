package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"

	"github.com/microscaling/microscaling/informer"
	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// decided lists the namespace/name of every member c keeps gauges for:
// the Deployments it decides.
func decided(ctx context.Context, c *controller) ([]string, error) {
	body, err := c.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "microscaling_desired_replicas{") {
			continue
		}
		ns, name := label(line, "namespace"), label(line, "deployment")
		out = append(out, ns+"/"+name)
	}
	slices.Sort(out)
	return out, nil
}

// label is the value of key in a Prometheus text line's labels.
func label(line, key string) string {
	_, rest, ok := strings.Cut(line, key+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// Three shards split the namespaces: each decides and writes exactly the
// Deployments of the namespaces its index owns, its Events say so, and
// when a shard's leader is killed its own standby (not another shard)
// takes its namespaces over: within the Lease's duration (15 s), counted
// from when the standby last saw it renewed, plus the retry period twice,
// once for that sighting and once for the acquisition: 2 s, jittered by
// client-go's leaderelection.JitterFactor (1.2) to up to 4.4 s.
func TestShardsSplitNamespaces(t *testing.T) {
	const count = 3
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	// Two namespaces for each shard.
	var namespaces []string
	per := make([]int, count)
	owner := map[string]int{}
	for i := 0; len(namespaces) < 2*count; i++ {
		ns := fmt.Sprintf("team-%d", i)
		for sh := range count {
			if (informer.Shard{Index: sh, Count: count}).Owns(ns) && per[sh] < 2 {
				per[sh]++
				owner[ns] = sh
				namespaces = append(namespaces, ns)
			}
		}
	}
	var all []string
	for _, ns := range namespaces {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
		topic := "jobs-" + ns
		ensureChannel(t, s, topic, "work")
		create(t, s, deployment(ns, "consumer", 1, queueAnn(s, topic, "work",
			"target-queue-length", "10", "max-replicas", "4", "scale-down-delay", "0s")))
		all = append(all, ns+"/consumer")
	}
	slices.Sort(all)

	lease := []string{"--leader-elect", "--leader-elect-lease-namespace=default"}
	shards := make([]*controller, count)
	for sh := range count {
		shards[sh] = startController(t, s.Kubeconfig, append(lease, fmt.Sprintf("--shard=%d/%d", sh, count), fmt.Sprintf("--leader-elect-identity=shard-%d-a", sh))...)
		waitLeader(t, shards[sh], 1, 30*time.Second)
	}
	standby := startController(t, s.Kubeconfig, append(lease, fmt.Sprintf("--shard=0/%d", count), "--leader-elect-identity=shard-0-b")...)
	waitLeader(t, standby, 0, 10*time.Second)
	for sh := range count {
		name, want := fmt.Sprintf("microscaling-%d-of-%d", sh, count), fmt.Sprintf("shard-%d-a", sh)
		l, err := s.Client.CoordinationV1().Leases("default").Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Lease %s: %v", name, err)
		}
		if h := l.Spec.HolderIdentity; h == nil || *h != want {
			t.Errorf("Lease %s held by %v, want %s", name, h, want)
		}
	}

	// A backlog everywhere, no consumers: every Deployment goes to its max.
	for _, ns := range namespaces {
		if err := workload.Publish(s.NSQ.TCPAddr, "jobs-"+ns, 100); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range namespaces {
		waitReplicas(t, s, ns, "consumer", 30*time.Second, "4", func(n int32) bool { return n == 4 })
	}
	var union []string
	for sh, c := range shards {
		got, err := decided(t.Context(), c)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, ns := range namespaces {
			if owner[ns] == sh {
				want = append(want, ns+"/consumer")
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("shard %d decides %v, want %v", sh, got, want)
		}
		union = append(union, got...)
	}
	slices.Sort(union)
	if !slices.Equal(union, all) {
		t.Errorf("the shards together decide %v, want each of %v once", union, all)
	}
	if got, err := decided(t.Context(), standby); err != nil || len(got) != 0 {
		t.Errorf("the standby decides %v (%v), want nothing", got, err)
	}
	// Each write's Event names the shard that made it: its own.
	for _, ns := range namespaces {
		evs, err := s.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "reason=Scaled"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) == 0 {
			t.Errorf("%s: no Scaled Event", ns)
		}
		for _, e := range evs.Items {
			if want := fmt.Sprintf("shard-%d-a", owner[ns]); e.Source.Host != want {
				t.Errorf("%s: Scaled by %q, want %q", ns, e.Source.Host, want)
			}
		}
	}

	// Shard 0's leader dies: its standby takes over shard 0's namespaces.
	shards[0].kill()
	killed := time.Now()
	waitLeader(t, standby, 1, 30*time.Second)
	took := time.Since(killed)
	t.Logf("shard 0's standby took over %s after its leader was killed", took.Round(100*time.Millisecond))
	retry := time.Duration(float64(2*time.Second) * (1 + leaderelection.JitterFactor))
	if took > 15*time.Second+2*retry+time.Second {
		t.Errorf("takeover took %s, want within the Lease's 15 s, two retries and a second's polling", took.Round(100*time.Millisecond))
	}
	var mine []string
	for _, ns := range namespaces {
		if owner[ns] == 0 {
			mine = append(mine, ns)
		}
	}
	// Its namespaces' queues empty: the standby, now shard 0's leader,
	// scales them down to min-replicas (0); the other shards' Deployments
	// stay where they are.
	for _, ns := range mine {
		if err := s.NSQ.EmptyChannel(t.Context(), "jobs-"+ns, "work"); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range mine {
		waitReplicas(t, s, ns, "consumer", 30*time.Second, "0", func(n int32) bool { return n == 0 })
		evs, err := s.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "reason=Scaled"})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(evs.Items, func(e corev1.Event) bool { return e.Source.Host == "shard-0-b" }) {
			t.Errorf("%s: no Scaled Event from shard 0's standby", ns)
		}
	}
	for _, ns := range namespaces {
		if owner[ns] != 0 {
			if n := mustReplicas(t, s, ns, "consumer"); n != 4 {
				t.Errorf("%s (shard %d): replicas %d after shard 0's handover, want 4", ns, owner[ns], n)
			}
		}
	}
}
