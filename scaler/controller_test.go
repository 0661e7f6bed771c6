package scaler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
)

type fakeCluster struct {
	groups map[string][]*appsv1.Deployment
}

func (f *fakeCluster) GroupKeys() []string {
	var out []string
	for k := range f.groups {
		out = append(out, k)
	}
	return out
}
func (f *fakeCluster) Members(k string) ([]*appsv1.Deployment, error) { return f.groups[k], nil }
func (f *fakeCluster) Capacity() (Capacity, error)                    { return nil, errors.New("no nodes in this test") }

type fakeQueues struct {
	mu      sync.Mutex // guards backlog and err
	backlog int64
	err     error
}

func (f *fakeQueues) Read(context.Context, []annotations.QueueRef) Readings { return f }
func (f *fakeQueues) Reading(annotations.QueueRef) (QueueReading, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return QueueReading{Backlog: f.backlog}, f.err
}

type fakeWriter struct {
	mu     sync.Mutex // guards writes
	writes []string
}

func (f *fakeWriter) Scale(_ context.Context, d *appsv1.Deployment, n int32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, fmt.Sprintf("%s=%d", d.Name, n))
	*d.Spec.Replicas = n // the cache catches up at once in this test
	d.ResourceVersion += "+"
	return nil
}

func (f *fakeWriter) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.writes
	f.writes = nil
	return w
}

func TestControllerTicks(t *testing.T) {
	replicas := int32(1)
	consumer := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "consumer", Namespace: "ns", ResourceVersion: "1",
		Annotations: map[string]string{annotations.Queue: "nsq://h:1/t/c", annotations.TargetQueueLength: "10",
			annotations.MinReplicas: "1", annotations.MaxReplicas: "5", annotations.ScaleDownDelay: "0s"}},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas}}
	cluster := &fakeCluster{groups: map[string][]*appsv1.Deployment{"ns/consumer": {consumer}}}
	queues := &fakeQueues{}
	writer := &fakeWriter{}
	rec := record.NewFakeRecorder(100)
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(Config{Interval: time.Second, Workers: 2}, cluster, queues, writer, rec, NewMetrics(prometheus.NewRegistry()), clk)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	defer func() { cancel(); c.queue.ShutDown(); wg.Wait() }()
	tick := func() []string {
		clk.Step(time.Second)
		c.runTick(ctx, clk.Now())
		return writer.take()
	}
	steps := []struct {
		name    string
		backlog int64
		err     error
		want    string // the writes of the tick, joined
		event   string // an event the tick must record
	}{
		{name: "steady state writes nothing", backlog: 5},
		{name: "backlog above target scales up", backlog: 30, want: "consumer=3", event: "consumer 1 -> 3: backlog 30 > target 10"},
		{name: "unreadable queue holds", err: errors.New("nsqd down"), event: "QueueUnreadable"},
		{name: "still unreadable: no second warning, no write", err: errors.New("nsqd down")},
		{name: "readable and empty again: down to min", backlog: 0, want: "consumer=1", event: "QueueReadable"},
		{name: "steady again", backlog: 0},
	}
	for _, st := range steps {
		queues.mu.Lock()
		queues.backlog, queues.err = st.backlog, st.err
		queues.mu.Unlock()
		got := strings.Join(tick(), ",")
		if got != st.want {
			t.Errorf("%s: writes %q, want %q", st.name, got, st.want)
		}
		var evs []string
		for len(rec.Events) > 0 {
			evs = append(evs, <-rec.Events)
		}
		if st.event != "" && !strings.Contains(strings.Join(evs, "|"), st.event) {
			t.Errorf("%s: events %q lack %q", st.name, evs, st.event)
		}
		if st.event == "" && len(evs) > 0 {
			t.Errorf("%s: unexpected events %q", st.name, evs)
		}
	}
}
