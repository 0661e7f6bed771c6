package informer

import (
	"context"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
)

func TestFits(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"pool": "batch", "cpus": "8"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "dedicated", Value: "batch", Effect: corev1.TaintEffectNoSchedule}}},
	}
	tolerate := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "batch", Effect: corev1.TaintEffectNoSchedule}}
	affinity := func(terms ...corev1.NodeSelectorTerm) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
	}
	expr := func(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	tests := []struct {
		name string
		spec corev1.PodSpec
		want bool
	}{
		{name: "untolerated taint", spec: corev1.PodSpec{}, want: false},
		{name: "tolerated taint", spec: corev1.PodSpec{Tolerations: tolerate}, want: true},
		{name: "nodeSelector matches", spec: corev1.PodSpec{Tolerations: tolerate, NodeSelector: map[string]string{"pool": "batch"}}, want: true},
		{name: "nodeSelector differs", spec: corev1.PodSpec{Tolerations: tolerate, NodeSelector: map[string]string{"pool": "web"}}, want: false},
		{name: "affinity In", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpIn, "batch", "x"))}, want: true},
		{name: "affinity NotIn", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpNotIn, "batch"))}, want: false},
		{name: "affinity Gt", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("cpus", corev1.NodeSelectorOpGt, "4"))}, want: true},
		{name: "affinity terms are ORed", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpIn, "web"), expr("pool", corev1.NodeSelectorOpExists))}, want: true},
		{name: "affinity on node name", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(corev1.NodeSelectorTerm{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"n2"}}}})}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fits(&tc.spec, node); got != tc.want {
				t.Errorf("fits = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRoom reads the room of a consumer and a remainder through the
// informers' slim caches: the members' own pods are given back, a pod of the
// remainder counts its native sidecar, its largest init container and its
// RuntimeClass's overhead as admission does, nodes it may not land on are
// not eligible, Pending pods are counted, and the Version moves with a pod.
func TestRoom(t *testing.T) {
	cpu := func(m string) corev1.ResourceList {
		return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(m)}
	}
	always := corev1.ContainerRestartPolicyAlways
	kata := "kata"
	remainderSpec := corev1.PodSpec{
		RuntimeClassName: &kata,
		InitContainers: []corev1.Container{
			{Name: "proxy", RestartPolicy: &always, Resources: corev1.ResourceRequirements{Requests: cpu("300m")}},
			{Name: "setup", Resources: corev1.ResourceRequirements{Requests: cpu("1")}},
		},
		Containers:   []corev1.Container{{Name: "work", Resources: corev1.ResourceRequirements{Requests: cpu("100m")}}},
		NodeSelector: map[string]string{"pool": "batch"},
	}
	deployment := func(name string, spec corev1.PodSpec) *appsv1.Deployment {
		d := managed("ns", name, "g")
		d.UID = types.UID(name)
		d.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
		d.Spec.Template.Spec = spec
		return d
	}
	consumerSpec := corev1.PodSpec{Containers: []corev1.Container{{Name: "work", Resources: corev1.ResourceRequirements{Requests: cpu("500m")}}}}
	nodeOf := func(name, pool string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pool": pool}},
			Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("3"),
				corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	}
	podOf := func(name, app, nodeName string, spec corev1.PodSpec, overhead corev1.ResourceList) *corev1.Pod {
		spec.NodeName, spec.Overhead = nodeName, overhead
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": app}}, Spec: spec,
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		if nodeName == "" {
			p.Status.Phase = corev1.PodPending
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}
		}
		return p
	}
	consumer, remainder := deployment("consumer", consumerSpec), deployment("remainder", remainderSpec)
	client := fake.NewClientset(consumer, remainder, nodeOf("batch-1", "batch"), nodeOf("web-1", "web"),
		&nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: kata}, Handler: "kata", Overhead: &nodev1.Overhead{PodFixed: cpu("50m")}},
		podOf("r1", "remainder", "batch-1", remainderSpec, cpu("50m")),
		podOf("r2", "remainder", "", remainderSpec, cpu("50m")),
		podOf("other", "other", "batch-1", consumerSpec, nil))
	inf := startInformers(t, client, Shard{})
	ctx := t.Context()
	members := []*appsv1.Deployment{consumer, remainder}
	r, err := inf.Room(members)
	if err != nil {
		t.Fatal(err)
	}
	// Nodes in list order: batch-1, web-1. batch-1: 3000m - other's 500m
	// (r1 is the group's own, given back).
	if got := []int64{r.Free[0].MilliCPU, r.Free[1].MilliCPU}; !slices.Equal(got, []int64{2500, 3000}) {
		t.Errorf("free millicpu %v, want [2500 3000]", got)
	}
	// The sidecar starts first and runs beside the 1 CPU init container
	// (1300m, more than 300m + 100m later), + 50m overhead.
	if got := r.Pods[1].MilliCPU; got != 1350 {
		t.Errorf("a remainder pod requests %dm, want 1350m", got)
	}
	if got := r.Pods[0].MilliCPU; got != 500 {
		t.Errorf("a consumer pod requests %dm, want 500m", got)
	}
	if !slices.Equal(r.Eligible[1], []int{0}) || !slices.Equal(r.Eligible[0], []int{0, 1}) {
		t.Errorf("eligible %v, want [[0 1] [0]]", r.Eligible)
	}
	if !slices.Equal(r.Pending, []int32{0, 1}) {
		t.Errorf("pending %v, want [0 1]", r.Pending)
	}
	if again, err := inf.Room(members); err != nil || again.Version != r.Version {
		t.Errorf("unchanged cluster: version %d (%v), want %d", again.Version, err, r.Version)
	}
	if err := client.CoreV1().Pods("ns").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		next, err := inf.Room(members)
		return err == nil && next.Version != r.Version && next.Free[0].MilliCPU == 3000, err
	})
	if err != nil {
		t.Errorf("after a pod was deleted, the room did not move: %v", err)
	}
}
