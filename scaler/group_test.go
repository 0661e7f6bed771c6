package scaler

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/execute"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
)

// roomCluster is one group, consumer + remainder, on one node with room
// for ten pods of 100m; every pod runs low enough for a remainder.
func roomCluster(members []*appsv1.Deployment) *fakeCluster {
	return &fakeCluster{
		groups:   map[string][]*appsv1.Deployment{"ns/g": members},
		priority: func(*appsv1.Deployment) (int32, string, error) { return -1, "low", nil },
		room: func(ms []*appsv1.Deployment) (policy.Room, error) {
			r := policy.Room{Version: 1, Free: []policy.Resources{{MilliCPU: 1000, Memory: 1 << 40, Pods: 110}}}
			for range ms {
				r.Eligible = append(r.Eligible, []int{0})
				r.Pending = append(r.Pending, 0)
				r.Pods = append(r.Pods, policy.Resources{MilliCPU: 100, Memory: 1 << 20, Pods: 1})
			}
			return r, nil
		},
	}
}

// scaleServer is a fake clientset whose /scale updates are recorded, and
// fail with failWith while it is set; GetScale answers serverReplicas.
type scaleServer struct {
	client *fake.Clientset
	mu     sync.Mutex // guards the fields below
	calls  []string
	fail   error
	server int32 // spec.replicas on the server, for GetScale after a conflict
}

func newScaleServer() *scaleServer {
	s := &scaleServer{client: fake.NewClientset()}
	s.client.PrependReactor("update", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		sc := a.(k8stesting.UpdateAction).GetObject().(*autoscalingv1.Scale)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.calls = append(s.calls, fmt.Sprintf("update deployments/scale %s=%d", sc.Name, sc.Spec.Replicas))
		if s.fail != nil {
			return true, nil, s.fail
		}
		return true, sc, nil
	})
	s.client.PrependReactor("get", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		replicas := s.server
		return true, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: a.(k8stesting.GetAction).GetName(), Namespace: "ns", ResourceVersion: "9"},
			Spec: appsv1.DeploymentSpec{Replicas: &replicas}}, nil
	})
	return s
}

func (s *scaleServer) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := strings.Join(s.calls, ", ")
	s.calls = nil
	return c
}

func groupMember(name string, replicas int32, ann ...string) *appsv1.Deployment {
	m := map[string]string{}
	for i := 0; i+1 < len(ann); i += 2 {
		m[annotations.Prefix+ann[i]] = ann[i+1]
	}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", ResourceVersion: "1", Annotations: m},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ReadyReplicas: replicas}}
}

func events(rec *record.FakeRecorder) string {
	var evs []string
	for len(rec.Events) > 0 {
		evs = append(evs, <-rec.Events)
	}
	return strings.Join(evs, " | ")
}

// The controller acts on a group decision with exactly the /scale writes
// and Events a user sees, through the real ScaleWriter on a fake clientset.
func TestControllerActsOnGroupDecisions(t *testing.T) {
	conflict := apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, "consumer", errors.New("changed"))
	type step struct {
		name       string
		backlog    int64
		fail       error
		server     int32
		calls      string // the API calls of the tick
		event      string // every Event of the tick must contain these, in order, joined by " | "
		scaleFails float64
	}
	tests := []struct {
		name    string
		dryRun  bool
		members []*appsv1.Deployment
		steps   []step
	}{
		{
			name: "room filling, decreases first, write errors told once, a Conflict is never overwritten",
			members: []*appsv1.Deployment{
				groupMember("consumer", 1, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "min-replicas", "1", "max-replicas", "20", "scale-down-delay", "0s"),
				groupMember("remainder", 0, "rule", "remainder", "priority", "2", "max-replicas", "40"),
			},
			steps: []step{
				{name: "the remainder fills the room", calls: "update deployments/scale remainder=9", event: "Normal Scaled remainder 0 -> 9: spare room for 9 of max 40"},
				{name: "steady: nothing written"},
				{name: "a backlog: room given back before it is taken", backlog: 400,
					calls: "update deployments/scale remainder=5, update deployments/scale consumer=5",
					event: "Normal Scaled remainder 9 -> 5: cut to 5 | Normal Scaled consumer 1 -> 5: backlog 400 > target 50"},
				{name: "drained: the consumer shrinks first, then the remainder grows", backlog: 0,
					calls: "update deployments/scale consumer=1, update deployments/scale remainder=9", event: "consumer 5 -> 1 | remainder 5 -> 9"},
			},
		},
		{
			name: "a failing write is said once and counted each time; a Conflict after someone scaled is returned",
			members: []*appsv1.Deployment{
				groupMember("consumer", 1, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"),
			},
			steps: []step{
				{name: "forbidden", backlog: 400, fail: apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments/scale"}, "consumer", errors.New("no")),
					calls: "update deployments/scale consumer=5", event: "Warning ScaleFailed consumer 1 -> 5", scaleFails: 1},
				{name: "still forbidden: counted, not said again", backlog: 400, fail: apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments/scale"}, "consumer", errors.New("no")),
					calls: "update deployments/scale consumer=5", scaleFails: 2},
				{name: "someone scaled meanwhile: the Conflict is returned, not retried", backlog: 400, fail: conflict, server: 3,
					calls: "update deployments/scale consumer=5", event: "Warning ScaleFailed consumer 1 -> 5 | not writing /scale of ns/consumer to 5: replicas changed to 3 meanwhile", scaleFails: 3},
				{name: "written again", backlog: 400, calls: "update deployments/scale consumer=5", event: "Normal Scaled consumer 1 -> 5", scaleFails: 3},
			},
		},
		{
			name: "budgets: members that disagree are told once; paused members are never written",
			members: []*appsv1.Deployment{
				groupMember("consumer", 2, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20", "group-max-replicas", "6", "paused", "true"),
				groupMember("remainder", 0, "rule", "remainder", "priority", "2", "max-replicas", "40", "group-max-replicas", "4"),
			},
			steps: []step{
				{name: "the smaller budget holds", backlog: 1000, calls: "update deployments/scale remainder=2",
					event: "Warning GroupBudgetConflict microscaling.com/group-max-replicas=6 disagrees with another member of group ns/g; using the smallest, 4 | Normal Scaled remainder 0 -> 2"},
				{name: "not said again", backlog: 1000},
			},
		},
		{
			name:   "a dry run writes nothing and tells each distinct decision once",
			dryRun: true,
			members: []*appsv1.Deployment{
				groupMember("consumer", 1, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"),
			},
			steps: []step{
				{name: "told", backlog: 400, event: "Normal ScaledDryRun dry run, not written: consumer 1 -> 5"},
				{name: "the same decision: not told again", backlog: 400},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server := newScaleServer()
			queues := &fakeQueues{}
			rec := record.NewFakeRecorder(100)
			clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			m := metrics.NewMetrics(prometheus.NewRegistry())
			exec := execute.New(execute.Config{Writer: execute.ScaleWriter{Client: server.client}, Recorder: rec, Metrics: m, DryRun: tc.dryRun}, clk)
			c := New(Config{Interval: time.Second, Workers: 2}, roomCluster(tc.members), queues, exec, m, clk)
			for _, st := range tc.steps {
				queues.mu.Lock()
				queues.backlog = st.backlog
				queues.mu.Unlock()
				server.mu.Lock()
				server.fail, server.server = st.fail, st.server
				server.mu.Unlock()
				clk.Step(time.Second)
				c.runTick(t.Context(), clk.Now())
				if got := server.take(); got != st.calls {
					t.Errorf("%s: calls %q, want %q", st.name, got, st.calls)
				}
				got := events(rec)
				for _, want := range strings.Split(st.event, " | ") {
					if !strings.Contains(got, want) {
						t.Errorf("%s: events %q, want %q", st.name, got, st.event)
						break
					}
				}
				if st.event == "" && got != "" {
					t.Errorf("%s: events %q, want none", st.name, got)
				}
				if got := testutil.ToFloat64(m.ScaleOps.WithLabelValues("ns", "consumer", "up", "error")); got != st.scaleFails {
					t.Errorf("%s: failed writes counted %v, want %v", st.name, got, st.scaleFails)
				}
			}
		})
	}
}
