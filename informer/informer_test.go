package informer

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
)

func managed(ns, name, group string) *appsv1.Deployment {
	ann := map[string]string{annotations.Queue: "nsq://h:1/t/c", annotations.TargetQueueLength: "10"}
	if group != "" {
		ann[annotations.Group] = group
	}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann}}
}

// describe renders groups as "key=a,b key2=c", keys sorted.
func describe(groups snapshot.Snapshot) string {
	var out []string
	for k, g := range groups {
		var names []string
		for _, m := range g.Members {
			names = append(names, m.Name)
		}
		out = append(out, k+"="+strings.Join(names, ","))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// startInformers runs the informers on client until the test ends.
func startInformers(t *testing.T, client *fake.Clientset, shard Shard) *Informers {
	t.Helper()
	inf, err := New(client, "", shard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); inf.Shutdown() })
	if !inf.Run(ctx) {
		t.Fatal("caches never synced")
	}
	return inf
}

// The snapshot follows the cache: members join, move and leave; an unchanged
// cache gives the same map without listing again.
func TestGroupsFollowTheCache(t *testing.T) {
	client := fake.NewClientset(managed("a", "c2", "g"), managed("a", "c1", "g"), managed("b", "c1", "g"),
		managed("a", "solo", ""), &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "unmanaged"}})
	inf := startInformers(t, client, Shard{})
	ctx := t.Context()
	want := func(step, groups string) {
		t.Helper()
		var got string
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			got = describe(inf.Snapshot())
			return got == groups, nil
		})
		if err != nil {
			t.Fatalf("%s: groups %q, want %q", step, got, groups)
		}
	}
	want("initial", "a/g=c1,c2 a/solo=solo b/g=c1")
	if a, b := inf.Snapshot(), inf.Snapshot(); reflect.ValueOf(a).Pointer() != reflect.ValueOf(b).Pointer() {
		t.Error("unchanged cache: Snapshot built a new map")
	}
	apps := client.AppsV1()
	if _, err := apps.Deployments("a").Update(ctx, managed("a", "c2", "h"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("c2 moved to group h", "a/g=c1 a/h=c2 a/solo=solo b/g=c1")
	if _, err := apps.Deployments("a").Create(ctx, managed("a", "c0", "h"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("c0 joined h", "a/g=c1 a/h=c0,c2 a/solo=solo b/g=c1")
	for _, name := range []string{"c1", "solo"} {
		if err := apps.Deployments("a").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(fmt.Errorf("deleting %s: %w", name, err))
		}
	}
	want("deleted: empty groups are gone", "a/h=c0,c2 b/g=c1")
}

// The slim cache keeps microscaling's own condition (the condition writer
// checks against it that what it wrote is still there) and no other.
func TestSlimKeepsOurCondition(t *testing.T) {
	d := managed("a", "c", "")
	d.Status.Conditions = []appsv1.DeploymentCondition{
		{Type: appsv1.DeploymentAvailable, Status: "True", Message: "minimum replicas available"},
		{Type: "microscaling.com/Scaling", Status: "True", Reason: "FollowingLoad", Message: "replicas: wants 1, has 1"},
	}
	got, err := slim(d, Shard{}, newInterner())
	if err != nil {
		t.Fatal(err)
	}
	cs := got.(*appsv1.Deployment).Status.Conditions
	if len(cs) != 1 || cs[0].Type != "microscaling.com/Scaling" || cs[0].Message != "replicas: wants 1, has 1" {
		t.Errorf("conditions kept %+v, want microscaling.com/Scaling alone", cs)
	}
}
