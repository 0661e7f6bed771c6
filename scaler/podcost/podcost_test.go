package podcost

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/queue"
)

func pod(name, ip string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, Labels: map[string]string{"app": "consumer"}, Annotations: ann},
		Status: corev1.PodStatus{PodIP: ip}}
}

// Busy pods get their held count as the cost, idle ones and ones the queue
// does not see 0; a pod already at its cost, a pod of another app and a
// pod being deleted are not written.
func TestMark(t *testing.T) {
	deleting := pod("consumer-gone", "10.0.0.4", nil)
	deleting.DeletionTimestamp = &metav1.Time{}
	other := pod("web-1", "10.0.0.8", nil)
	other.Labels = map[string]string{"app": "web"}
	pods := []*corev1.Pod{
		pod("consumer-busy", "10.0.0.1", nil),
		pod("consumer-idle", "10.0.0.2", map[string]string{Annotation: "4"}), // busy last time
		pod("consumer-by-ip", "10.0.0.3", nil),
		pod("consumer-unseen", "10.0.0.5", nil),
		pod("consumer-same", "10.0.0.6", map[string]string{Annotation: "2"}),
		deleting, other,
	}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, p := range pods {
		if err := idx.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewClientset()
	for _, p := range pods {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	client.ClearActions()
	var h queue.Holdings
	h.Add([]queue.Consumer{
		{Hostname: "consumer-busy", Remote: "10.0.0.1:1", Held: 5},
		{Hostname: "consumer-idle", Remote: "10.0.0.2:1", Held: 0},
		{Hostname: "localhost", Remote: "10.0.0.3:1", Held: 3},
		{Hostname: "consumer-same", Remote: "10.0.0.6:1", Held: 2},
		{Hostname: "consumer-gone", Remote: "10.0.0.4:1", Held: 1},
	})
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "consumer"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "consumer"}}}}
	ds := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := ds.Add(d); err != nil {
		t.Fatal(err)
	}
	m := &Marker{Client: client, Pods: corelisters.NewPodLister(idx), Deployments: appslisters.NewDeploymentLister(ds)}
	n, err := m.Mark(context.Background(), &snapshot.Object{Namespace: "team-a", Name: "consumer"}, h)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"consumer-busy": "5", "consumer-idle": "0", "consumer-by-ip": "3"}
	if n != len(want) || len(client.Actions()) != len(want) {
		t.Errorf("wrote %d pods in %d requests, want %d: %v", n, len(client.Actions()), len(want), client.Actions())
	}
	// Keeping the busy ones comes first, clearing a stale cost last.
	if acts := client.Actions(); len(acts) > 0 {
		if last, ok := acts[len(acts)-1].(interface{ GetName() string }); !ok || last.GetName() != "consumer-idle" {
			t.Errorf("last write %v, want the stale cost of consumer-idle cleared last", acts[len(acts)-1])
		}
	}
	for name, cost := range want {
		p, err := client.CoreV1().Pods("team-a").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Annotations[Annotation]; got != cost {
			t.Errorf("%s: cost %q, want %q", name, got, cost)
		}
	}
}
