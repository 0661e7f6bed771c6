package execute

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
)

// drain returns the Events recorded so far.
func drain(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// calls lists the client's actions as verb/resource[/subresource].
func calls(client *fake.Clientset) []string {
	var out []string
	for _, a := range client.Actions() {
		s := a.GetVerb() + " " + a.GetResource().Resource
		if a.GetSubresource() != "" {
			s += "/" + a.GetSubresource()
		}
		out = append(out, s)
	}
	client.ClearActions()
	return out
}

// scaleReactor answers /scale updates as the API server would, or with
// *fail when it is set (the fake clientset's tracker cannot convert a Scale).
func scaleReactor(fail *error) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		if *fail != nil {
			return true, nil, *fail
		}
		return true, a.(k8stesting.UpdateAction).GetObject(), nil
	}
}

// TestScale: each write is one /scale update and one Scaled Event; a write
// that fails the same way is counted each time and told once, told again
// after a success; a dry run calls nothing and tells each decision once.
func TestScale(t *testing.T) {
	three := int32(3)
	client := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", ResourceVersion: "1"}, Spec: appsv1.DeploymentSpec{Replicas: &three}})
	d := &snapshot.Object{Name: "c", Namespace: "ns", Version: "1", Replicas: three}
	var fail error
	client.PrependReactor("update", "deployments", scaleReactor(&fail))
	rec := record.NewFakeRecorder(100)
	m := metrics.NewMetrics(prometheus.NewRegistry())
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := New(Config{Writer: ScaleWriter{Client: client}, Recorder: rec, Metrics: m}, clk)
	var mem Memory
	ctx := context.Background()
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments/scale"}, "c", fmt.Errorf("no"))

	steps := []struct {
		name   string
		fail   error
		to     int32
		wrote  bool
		calls  []string
		events []string
	}{
		{name: "a write", to: 5, wrote: true, calls: []string{"update deployments/scale"},
			events: []string{"Normal Scaled c 3 -> 5: load"}},
		{name: "forbidden", fail: forbidden, to: 6, calls: []string{"update deployments/scale"},
			events: []string{"Warning ScaleFailed c 3 -> 6: load: writing /scale of ns/c to 6: deployments/scale.apps \"c\" is forbidden: no"}},
		{name: "forbidden the same way: counted, not told again", fail: forbidden, to: 6, calls: []string{"update deployments/scale"}},
		{name: "written again", to: 6, wrote: true, calls: []string{"update deployments/scale"}, events: []string{"Normal Scaled c 3 -> 6: load"}},
		{name: "forbidden after a success: told again", fail: forbidden, to: 6, calls: []string{"update deployments/scale"},
			events: []string{"Warning ScaleFailed c 3 -> 6: load: writing /scale of ns/c to 6: deployments/scale.apps \"c\" is forbidden: no"}},
		{name: "deleted meanwhile: nothing told", fail: apierrors.NewNotFound(schema.GroupResource{Group: "apps", Resource: "deployments"}, "c"), to: 6,
			calls: []string{"update deployments/scale"}},
	}
	for _, st := range steps {
		fail = st.fail
		if got := e.Scale(ctx, "ns/g", d, &mem, 3, st.to, "load"); got != st.wrote {
			t.Errorf("%s: Scale = %v, want %v", st.name, got, st.wrote)
		}
		if got := calls(client); !slices.Equal(got, st.calls) {
			t.Errorf("%s: API calls %v, want %v", st.name, got, st.calls)
		}
		if got := drain(rec); !slices.Equal(got, st.events) {
			t.Errorf("%s: Events %q, want %q", st.name, got, st.events)
		}
	}
	if n := testutil.ToFloat64(m.ScaleOps.WithLabelValues("ns", "c", "up", "error")); n != 3 {
		t.Errorf("failed writes counted %v, want 3", n)
	}
	if n := testutil.ToFloat64(m.ScaleOps.WithLabelValues("ns", "c", "up", "ok")); n != 2 {
		t.Errorf("writes counted %v, want 2", n)
	}
	if got, want := mem.last, "3 -> 6 at 2026-01-01T00:00:00Z: load"; got != want {
		t.Errorf("last write %q, want %q", got, want)
	}

	dry := New(Config{Writer: ScaleWriter{Client: client}, Recorder: rec, Metrics: m, DryRun: true}, clk)
	var dm Memory
	for range 2 {
		if dry.Scale(ctx, "ns/g", d, &dm, 3, 1, "idle") {
			t.Error("a dry run reported a write")
		}
	}
	if got := calls(client); len(got) != 0 {
		t.Errorf("a dry run called %v", got)
	}
	if got, want := drain(rec), []string{"Normal ScaledDryRun dry run, not written: c 3 -> 1: idle"}; !slices.Equal(got, want) {
		t.Errorf("dry run Events %q, want %q", got, want)
	}
}

// TestObserve: while the cache still shows the object a write replaced,
// the written count stands; a count someone else set is told once and
// taken as it is; after ForgetWrite a change is nobody's to tell.
func TestObserve(t *testing.T) {
	rec := record.NewFakeRecorder(100)
	client := fake.NewClientset()
	var fail error
	client.PrependReactor("update", "deployments", scaleReactor(&fail))
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := New(Config{Writer: ScaleWriter{Client: client}, Recorder: rec, Metrics: metrics.NewMetrics(prometheus.NewRegistry())}, clk)
	d := &snapshot.Object{Name: "c", Namespace: "ns", Version: "7", Replicas: 2}
	var mem Memory
	if e.Observe(d, &mem, false) != 2 {
		t.Fatal("before any write the cache's count stands")
	}
	if !e.Scale(context.Background(), "g", d, &mem, 2, 4, "load") {
		t.Fatal("not written")
	}
	drain(rec)
	if got := e.Observe(d, &mem, false); got != 4 {
		t.Errorf("cache behind the write: Observe = %d, want 4", got)
	}
	moved := *d
	moved.Version, moved.Replicas = "9", 9
	for i := range 2 {
		if got := e.Observe(&moved, &mem, false); got != 9 {
			t.Errorf("scaled by someone else: Observe = %d, want 9", got)
		}
		evs := drain(rec)
		if i == 0 && (len(evs) != 1 || !strings.HasPrefix(evs[0], "Normal ExternalScale replicas set to 9 by someone else (microscaling last set 4)")) {
			t.Errorf("first look: Events %q, want one ExternalScale", evs)
		}
		if i == 1 && len(evs) != 0 {
			t.Errorf("second look: Events %q, want none", evs)
		}
	}
	mem.ForgetWrite()
	moved.Replicas = 1
	if got := e.Observe(&moved, &mem, false); got != 1 || len(drain(rec)) != 0 {
		t.Errorf("after ForgetWrite: Observe = %d, or an Event told", got)
	}
}

// TestTold: Tell says each message once and again after it is cleared;
// Turned says on and off once each, building only the one it tells.
func TestTold(t *testing.T) {
	rec := record.NewFakeRecorder(100)
	e := New(Config{Recorder: rec}, clocktesting.NewFakeClock(time.Time{}))
	d := &snapshot.Object{Name: "c", Namespace: "ns"}
	var mem Memory
	for _, msg := range []string{"a", "a", "b", "", "", "b"} {
		e.Tell(d, &mem, corev1.EventTypeWarning, ReasonGroupBudgetConflict, msg)
	}
	if got, want := drain(rec), []string{"Warning GroupBudgetConflict a", "Warning GroupBudgetConflict b", "Warning GroupBudgetConflict b"}; !slices.Equal(got, want) {
		t.Errorf("Tell: %q, want %q", got, want)
	}
	built := 0
	on := func() (string, string, string) {
		built++
		return corev1.EventTypeWarning, ReasonFallbackActive, "on"
	}
	off := func() (string, string, string) {
		built++
		return corev1.EventTypeNormal, ReasonFallbackEnded, "off"
	}
	for _, now := range []bool{false, true, true, false, false, true} {
		e.Turned(d, &mem, "fallback", now, on, off)
	}
	if got, want := drain(rec), []string{"Warning FallbackActive on", "Normal FallbackEnded off", "Warning FallbackActive on"}; !slices.Equal(got, want) || built != 3 {
		t.Errorf("Turned: %q (built %d), want %q (built 3)", got, built, want)
	}
}

// conds records the conditions set.
type conds struct{ set []string }

func (c *conds) Set(d *snapshot.Object, cond condition.Condition) {
	c.set = append(c.set, d.Name+": "+string(cond.Status)+" "+cond.Reason+" "+cond.Message)
}
func (c *conds) Clear(*snapshot.Object) {}
func (c *conds) Forget(string, string)  {}

// TestDecided: each decision keeps its condition on the member, built
// again when what it says changes: the Held word, the replicas, the spec,
// the last write.
func TestDecided(t *testing.T) {
	c := &conds{}
	three := int32(3)
	client := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", ResourceVersion: "1"}, Spec: appsv1.DeploymentSpec{Replicas: &three}})
	var fail error
	client.PrependReactor("update", "deployments", scaleReactor(&fail))
	e := New(Config{Writer: ScaleWriter{Client: client}, Recorder: record.NewFakeRecorder(100), Metrics: metrics.NewMetrics(prometheus.NewRegistry()), Conditions: c},
		clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
	d := &snapshot.Object{Name: "c", Namespace: "ns", Version: "1", Replicas: 3}
	spec := &annotations.Spec{MinReplicas: 1, MaxReplicas: 5}
	var mem Memory
	e.Decided(d, &mem, "", spec, 3, 3)
	e.Decided(d, &mem, "", spec, 3, 3)
	e.Decided(d, &mem, policy.HeldMax, spec, 3, 5)
	if !e.Scale(t.Context(), "g", d, &mem, 3, 5, "load") {
		t.Fatal("not written")
	}
	e.Decided(d, &mem, "", spec, 5, 5)
	want := []string{
		"c: True FollowingLoad replicas: wants 3, has 3 (min 1, max 5)",
		"c: True FollowingLoad replicas: wants 3, has 3 (min 1, max 5)",
		"c: False AtMaxReplicas held at max-replicas; replicas: wants 5, has 3 (min 1, max 5)",
		"c: True FollowingLoad replicas: wants 5, has 5 (min 1, max 5); last scaled 3 -> 5 at 2026-01-01T00:00:00Z: load",
	}
	if !slices.Equal(c.set, want) {
		t.Errorf("conditions\n%s\nwant\n%s", strings.Join(c.set, "\n"), strings.Join(want, "\n"))
	}
}
