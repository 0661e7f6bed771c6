package informer

import (
	"fmt"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestParseShard(t *testing.T) {
	for in, want := range map[string]string{"": "all", "0/1": "all", "0/3": "0/3", "2/3": "2/3", "63/64": "63/64"} {
		s, err := ParseShard(in)
		if err != nil || s.String() != want {
			t.Errorf("ParseShard(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for in, says := range map[string]string{
		"3":    "want INDEX/COUNT",
		"a/3":  "want INDEX/COUNT",
		"1/x":  "want INDEX/COUNT",
		"3/3":  "the index must be 0 to 2",
		"-1/3": "the index must be 0 to 2",
		"0/0":  "the count must be 1 to 64",
		"0/65": "the count must be 1 to 64",
	} {
		if _, err := ParseShard(in); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseShard(%q): err %v, want one saying %q", in, err, says)
		}
	}
}

// Every namespace has exactly one shard of a count, the same one every
// time and in every release (the hash is pinned: changing it would move
// namespaces between running shards), and the shards share them about
// evenly.
func TestShardsSplitTheNamespaces(t *testing.T) {
	const n, count = 3000, 3
	per := make([]int, count)
	for i := range n {
		ns := fmt.Sprintf("team-%d", i)
		owners := 0
		for s := range count {
			if (Shard{Index: s, Count: count}).Owns(ns) {
				owners++
				per[s]++
			}
		}
		if owners != 1 {
			t.Fatalf("namespace %s has %d shards of %d", ns, owners, count)
		}
	}
	for s, got := range per {
		if got < n/count*85/100 || got > n/count*115/100 {
			t.Errorf("shard %d of %d owns %d of %d namespaces: not about a third", s, count, got, n)
		}
	}
	// FNV-1a (32 bits) of "default" is 0x933b5bde: 0 modulo 3.
	for _, tc := range []struct {
		ns    string
		count int
		index int
	}{{"default", 3, 0}, {"kube-system", 5, 4}, {"team-a", 3, 1}} {
		if !(Shard{Index: tc.index, Count: tc.count}).Owns(tc.ns) {
			t.Errorf("%s is not shard %d of %d's", tc.ns, tc.index, tc.count)
		}
	}
	if !(Shard{}).Owns("anything") {
		t.Error("the zero Shard owns every namespace")
	}
}

// Another shard's Deployments and autoscalers are cached as names alone:
// never grouped, nothing of them kept to manage them by.
func TestOtherShardsDeploymentsAreNotManaged(t *testing.T) {
	var mine, theirs string
	for i := 0; mine == "" || theirs == ""; i++ {
		ns := fmt.Sprintf("ns-%d", i)
		if (Shard{Index: 0, Count: 2}).Owns(ns) {
			mine = ns
		} else {
			theirs = ns
		}
	}
	client := fake.NewClientset(managed(mine, "c", ""), managed(theirs, "c", ""),
		&autoscalingv2.HorizontalPodAutoscaler{ObjectMeta: metav1.ObjectMeta{Namespace: theirs, Name: "h"},
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{Kind: "Deployment", Name: "c", APIVersion: "apps/v1"}}})
	inf := startInformers(t, client, Shard{Index: 0, Count: 2})
	if got, want := describe(inf.Snapshot()), mine+"/c=c"; got != want {
		t.Errorf("groups %q, want %q: only this shard's namespace", got, want)
	}
	d, err := inf.Deployments.Deployments(theirs).Get("c")
	if ok := err == nil; !ok || len(d.Annotations) != 0 || d.Spec.Replicas != nil {
		t.Errorf("another shard's Deployment cached as %+v (found %v), want its name alone", d, ok)
	}
	if got := inf.Autoscalers(theirs, "c"); len(got) != 0 {
		t.Errorf("another shard's autoscalers %v, want none", got)
	}
}
