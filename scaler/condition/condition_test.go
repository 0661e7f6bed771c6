package condition

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/informer/snapshot"
)

func deployment(conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "d"},
		Status: appsv1.DeploymentStatus{Conditions: conds}}
}

// obj is d as a snapshot keeps it.
func obj(d *appsv1.Deployment) *snapshot.Object {
	o := &snapshot.Object{Namespace: d.Namespace, Name: d.Name}
	if c := Find(d); c != nil {
		o.Condition = &snapshot.Condition{Status: string(c.Status), Reason: c.Reason, Message: c.Message,
			Since: c.LastTransitionTime.Time, Updated: c.LastUpdateTime.Time}
	}
	return o
}

// patches counts the status patches client received.
func patches(client *fake.Clientset) int {
	n := 0
	for _, a := range client.Actions() {
		if a.GetVerb() == "patch" && a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

// waitFor polls until the Deployment's conditions satisfy ok.
func waitFor(t *testing.T, client *fake.Clientset, what string, ok func(*appsv1.Deployment) bool) *appsv1.Deployment {
	t.Helper()
	var d *appsv1.Deployment
	err := wait.PollUntilContextTimeout(t.Context(), 5*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		d, err = client.AppsV1().Deployments("ns").Get(ctx, "d", metav1.GetOptions{})
		return err == nil && ok(d), err
	})
	if err != nil {
		t.Fatalf("%s: %v (conditions %+v)", what, err, d.Status.Conditions)
	}
	return d
}

// run runs w with workers until the test ends.
func run(t *testing.T, w *Writer, workers int) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { w.Run(ctx, workers); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestConditionWrittenOnChangeOnly(t *testing.T) {
	available := appsv1.DeploymentCondition{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}
	client := fake.NewClientset(deployment(available))
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC))
	w := NewWriter(client, clk, 10*time.Second)
	run(t, w, 2)

	held := Condition{Status: corev1.ConditionFalse, Reason: "QueueUnreadable", Message: "queue unreadable"}
	w.Set(obj(deployment(available)), held)
	d := waitFor(t, client, "the held condition", func(d *appsv1.Deployment) bool {
		c := Find(d)
		return c != nil && c.Reason == "QueueUnreadable"
	})
	c := Find(d)
	if c.Status != corev1.ConditionFalse || c.Message != "queue unreadable" || !c.LastTransitionTime.Time.Equal(clk.Now()) {
		t.Errorf("condition %+v", c)
	}
	if len(d.Status.Conditions) != 2 {
		t.Errorf("conditions %+v: the Deployment controller's Available must stay", d.Status.Conditions)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("the spec changed: replicas %v", *d.Spec.Replicas)
	}

	// The same again, as every tick sets it: no write.
	for range 5 {
		w.Set(obj(d), held)
	}
	if n := patches(client); n != 1 {
		t.Errorf("%d patches after the same condition six times, want 1", n)
	}

	// A new message within the interval waits for it; the latest wins, and
	// the transition time stays.
	clk.Step(2 * time.Second)
	held.Message = "queue unreadable; wants 3"
	w.Set(obj(d), held)
	held.Message = "queue unreadable; wants 4"
	w.Set(obj(d), held)
	if n := patches(client); n != 1 {
		t.Errorf("%d patches within the interval, want 1", n)
	}
	clk.Step(8 * time.Second)
	d = waitFor(t, client, "the new message", func(d *appsv1.Deployment) bool {
		c := Find(d)
		return c != nil && c.Message == held.Message
	})
	if n := patches(client); n != 2 {
		t.Errorf("%d patches, want 2 (the latest message once)", n)
	}
	if c := Find(d); !c.LastTransitionTime.Time.Equal(clk.Now().Add(-10 * time.Second)) {
		t.Errorf("since %v, want the first transition %v", c.LastTransitionTime, clk.Now().Add(-10*time.Second))
	}

	// A new reason: a new transition time.
	clk.Step(20 * time.Second)
	w.Set(obj(d), Condition{Status: corev1.ConditionTrue, Reason: "FollowingLoad", Message: "wants 4"})
	d = waitFor(t, client, "following", func(d *appsv1.Deployment) bool { return Find(d).Reason == "FollowingLoad" })
	if c := Find(d); !c.LastTransitionTime.Time.Equal(clk.Now()) || c.Status != corev1.ConditionTrue {
		t.Errorf("condition %+v", c)
	}

	// Released: the condition goes, Available stays.
	w.Clear(obj(d))
	d = waitFor(t, client, "no condition", func(d *appsv1.Deployment) bool { return Find(d) == nil })
	if len(d.Status.Conditions) != 1 || d.Status.Conditions[0].Type != appsv1.DeploymentAvailable {
		t.Errorf("conditions %+v", d.Status.Conditions)
	}
}

// A restarted controller finds the condition on the Deployment: nothing
// to write. One taken away by someone else is written again.
func TestConditionAlreadyThere(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC))
	there := appsv1.DeploymentCondition{Type: Type, Status: corev1.ConditionTrue, Reason: "FollowingLoad", Message: "wants 2",
		LastUpdateTime: metav1.NewTime(clk.Now().Add(-time.Hour)), LastTransitionTime: metav1.NewTime(clk.Now().Add(-time.Hour))}
	client := fake.NewClientset(deployment(there))
	w := NewWriter(client, clk, 10*time.Second)
	run(t, w, 1)
	c := Condition{Status: corev1.ConditionTrue, Reason: "FollowingLoad", Message: "wants 2"}
	w.Set(obj(deployment(there)), c)
	w.Set(obj(deployment(there)), c)
	// Taken away (the cache shows none, long after it was written).
	w.Set(obj(deployment()), c)
	d := waitFor(t, client, "written again", func(d *appsv1.Deployment) bool {
		return Find(d) != nil && Find(d).LastUpdateTime.Time.Equal(clk.Now())
	})
	if n := patches(client); n != 1 {
		t.Errorf("%d patches, want 1 (only after it was taken away)", n)
	}
	if Find(d).Message != "wants 2" {
		t.Errorf("condition %+v", Find(d))
	}
}

// A failed write is retried; a deleted Deployment is forgotten.
func TestConditionRetried(t *testing.T) {
	client := fake.NewClientset(deployment())
	fail := 2
	client.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		if fail > 0 {
			fail--
			return true, nil, fmt.Errorf("injected failure")
		}
		return false, nil, nil
	})
	clk := clocktesting.NewFakeClock(time.Now())
	w := NewWriter(client, clk, time.Second)
	run(t, w, 1)
	w.Set(obj(deployment()), Condition{Status: corev1.ConditionFalse, Reason: "Paused", Message: strings.Repeat("é", 600)})
	d := waitFor(t, client, "written after two failures", func(d *appsv1.Deployment) bool {
		clk.Step(time.Second) // the retries' back-off
		return Find(d) != nil
	})
	if fail != 0 {
		t.Errorf("%d injected failures left", fail)
	}
	if m := Find(d).Message; len(m) > MaxMessage || !strings.HasSuffix(m, "…") {
		t.Errorf("message of %d bytes, want at most %d, cut with …", len(m), MaxMessage)
	}
}
