package informer

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"k8s.io/client-go/kubernetes/fake"
)

// member polls the snapshot until namespace/name is in it and ok says it
// is as wanted.
func member(t *testing.T, inf *Informers, key, name string, ok func(snapshot.Member) error) snapshot.Member {
	t.Helper()
	var got snapshot.Member
	var why error
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		why = fmt.Errorf("%s not in group %s", name, key)
		for _, m := range inf.Snapshot()[key].Members {
			if m.Name == name {
				got, why = m, ok(m)
			}
		}
		return why == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", name, why)
	}
	return got
}

// The snapshot hands out members as plain values: their annotations parsed
// (again only when they change), a bad one's problem, the autoscalers that
// target them and a remainder's pod priority, each following the cache.
func TestSnapshotMembers(t *testing.T) {
	bad := managed("a", "bad", "g")
	bad.Annotations[annotations.TargetQueueLength] = "lots"
	rem := managed("a", "rem", "g")
	rem.Annotations = map[string]string{annotations.Group: "g", annotations.Rule: "remainder", annotations.MaxReplicas: "5"}
	rem.Spec.Template.Spec.PriorityClassName = "low"
	c := managed("a", "c", "g")
	c.Annotations[annotations.MaxReplicas] = "5"
	c.Spec.Replicas = new(int32)
	c.Status.Conditions = []appsv1.DeploymentCondition{{Type: "microscaling.com/Scaling", Status: "True", Reason: "FollowingLoad", Message: "m"}}
	client := fake.NewClientset(c, bad, rem)
	inf := startInformers(t, client, Shard{})
	ctx := t.Context()
	apps := client.AppsV1().Deployments("a")

	first := member(t, inf, "a/g", "c", func(m snapshot.Member) error {
		if m.Spec == nil || m.Spec.TargetQueueLength != 10 || m.Replicas != 0 || m.Condition == nil || m.Condition.Reason != "FollowingLoad" {
			return fmt.Errorf("member %+v, want its spec (target 10), 0 replicas and its condition", m)
		}
		return nil
	})
	member(t, inf, "a/g", "bad", func(m snapshot.Member) error {
		if m.Spec != nil || m.Problem == nil {
			return fmt.Errorf("spec %v, problem %v: want a problem", m.Spec, m.Problem)
		}
		return nil
	})
	member(t, inf, "a/g", "rem", func(m snapshot.Member) error {
		if m.PriorityErr == nil {
			return fmt.Errorf("priority %d of a missing PriorityClass, want an error", m.Priority)
		}
		return nil
	})

	// A status change: the same parse. An annotation change: parsed again.
	c.Status.ReadyReplicas = 3
	c.ResourceVersion = "2"
	if _, err := apps.UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := member(t, inf, "a/g", "c", func(m snapshot.Member) error {
		if m.Ready != 3 {
			return fmt.Errorf("ready %d, want 3", m.Ready)
		}
		return nil
	})
	if m.Parsed != first.Parsed || m.Spec != first.Spec {
		t.Errorf("a status change parsed the annotations again (parsed %d, was %d)", m.Parsed, first.Parsed)
	}
	c.Annotations[annotations.TargetQueueLength] = "20"
	if _, err := apps.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	member(t, inf, "a/g", "c", func(m snapshot.Member) error {
		if m.Parsed == first.Parsed || m.Spec.TargetQueueLength != 20 {
			return fmt.Errorf("target %d (parsed %d), want 20 parsed again", m.Spec.TargetQueueLength, m.Parsed)
		}
		return nil
	})

	// Neither an autoscaler nor a PriorityClass changes a Deployment: the
	// snapshot follows them all the same.
	if _, err := client.AutoscalingV2().HorizontalPodAutoscalers("a").Create(ctx, &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "h"},
		Spec:       autoscalingv2.HorizontalPodAutoscalerSpec{ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{Kind: "Deployment", Name: "c", APIVersion: "apps/v1"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	member(t, inf, "a/g", "c", func(m snapshot.Member) error {
		if len(m.Autoscalers) != 1 || m.Autoscalers[0] != "h" {
			return fmt.Errorf("autoscalers %v, want [h]", m.Autoscalers)
		}
		return nil
	})
	if _, err := client.SchedulingV1().PriorityClasses().Create(ctx, &schedulingv1.PriorityClass{
		ObjectMeta: metav1.ObjectMeta{Name: "low"}, Value: -5}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	member(t, inf, "a/g", "rem", func(m snapshot.Member) error {
		if m.PriorityErr != nil || m.Priority != -5 || m.PriorityClass != "low" {
			return fmt.Errorf("priority %d of %q (%v), want -5 of low", m.Priority, m.PriorityClass, m.PriorityErr)
		}
		return nil
	})
}

// With QueuesInNamespace, a member naming another namespace's queue has a
// problem that names the key, and no spec.
func TestSnapshotQueuesInNamespace(t *testing.T) {
	mine, other := managed("a", "mine", ""), managed("a", "other", "")
	for _, d := range []*appsv1.Deployment{mine, other} {
		d.Annotations[annotations.MaxReplicas] = "5"
	}
	mine.Annotations[annotations.Queue] = "nsq://nsqd.a.svc:4151/t/c"
	other.Annotations[annotations.Queue] = "nsq://nsqd.other.svc:4151/t/c"
	inf, err := New(fake.NewClientset(mine, other), "", Shard{})
	if err != nil {
		t.Fatal(err)
	}
	inf.QueuesInNamespace = true
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(func() { cancel(); inf.Shutdown() })
	if !inf.Run(ctx) {
		t.Fatal("caches never synced")
	}
	member(t, inf, "a/mine", "mine", func(m snapshot.Member) error {
		if m.Spec == nil {
			return fmt.Errorf("problem %v, want its own namespace's queue accepted", m.Problem)
		}
		return nil
	})
	member(t, inf, "a/other", "other", func(m snapshot.Member) error {
		if m.Spec != nil || m.Problem == nil || !strings.Contains(m.Problem.Error(), annotations.Queue) {
			return fmt.Errorf("spec %v, problem %v: want a problem naming %s", m.Spec, m.Problem, annotations.Queue)
		}
		return nil
	})
}
