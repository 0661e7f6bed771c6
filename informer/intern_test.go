package informer

import (
	"fmt"
	"reflect"
	"testing"
	"unsafe"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/annotations"
)

// decoded is a Deployment as the API's decoder gives it: every string and
// map its own.
func decoded(name string) *appsv1.Deployment {
	own := func(s string) string { return string([]byte(s)) }
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: own("team-a"), Name: name, Annotations: map[string]string{
			own(annotations.Queue): own("nsq://nsqd:4151/jobs/work"), own("kubectl.kubernetes.io/last-applied-configuration"): "{...}",
		}},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: own("work"), Image: own("registry.example/work:1"), Command: []string{"work"},
			Env: []corev1.EnvVar{{Name: "A", Value: "1"}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")},
			},
		}}}}},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 2, Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: "True"}, {Type: "microscaling.com/Scaling", Status: "True", Reason: "FollowingLoad"},
		}},
	}
}

func sameString(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

// Two Deployments of one namespace, image and container shape keep one
// copy of each between them; what the controller never reads is gone.
func TestSlimSharesWhatIsEqual(t *testing.T) {
	in := newInterner()
	a, err := slim(decoded("a"), Shard{}, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := slim(decoded("b"), Shard{}, in)
	if err != nil {
		t.Fatal(err)
	}
	da, db := a.(*appsv1.Deployment), b.(*appsv1.Deployment)
	ca, cb := da.Spec.Template.Spec.Containers[0], db.Spec.Template.Spec.Containers[0]
	want := corev1.Container{Name: "work", Image: "registry.example/work:1", Resources: corev1.ResourceRequirements{Requests: ca.Resources.Requests}}
	if !reflect.DeepEqual(ca, want) {
		t.Errorf("container kept %+v, want %+v", ca, want)
	}
	if len(da.Annotations) != 1 || da.Annotations[annotations.Queue] != "nsq://nsqd:4151/jobs/work" {
		t.Errorf("annotations kept %v, want %s alone", da.Annotations, annotations.Queue)
	}
	if len(da.Status.Conditions) != 1 || da.Status.ReadyReplicas != 2 {
		t.Errorf("status kept %+v, want ready 2 and our condition alone", da.Status)
	}
	if n := cap(da.Status.Conditions); n != 1 {
		t.Errorf("the conditions' array holds %d, want our condition's 1 (the decoded array holds them all)", n)
	}
	if reflect.ValueOf(ca.Resources.Requests).Pointer() != reflect.ValueOf(cb.Resources.Requests).Pointer() {
		t.Error("equal requests: each Deployment keeps its own map")
	}
	for what, pair := range map[string][2]string{
		"namespace": {da.Namespace, db.Namespace}, "image": {ca.Image, cb.Image},
		"annotation value": {da.Annotations[annotations.Queue], db.Annotations[annotations.Queue]},
	} {
		if !sameString(pair[0], pair[1]) {
			t.Errorf("equal %ss: each Deployment keeps its own", what)
		}
	}
	for k := range da.Annotations {
		for k2 := range db.Annotations {
			if !sameString(k, k2) {
				t.Error("equal annotation keys: each Deployment keeps its own")
			}
		}
	}
	other := decoded("c")
	other.Spec.Template.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("200m")
	c, err := slim(other, Shard{}, in)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.(*appsv1.Deployment).Spec.Template.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU]; got.String() != "200m" {
		t.Errorf("other requests: cpu %s, want 200m", got.String())
	}
}

// A full table is emptied, and shares again what comes after.
func TestInternerBounded(t *testing.T) {
	in := newInterner()
	for i := range internMax + 10 {
		in.string(fmt.Sprintf("v%d", i))
	}
	if n := len(in.strs); n > internMax {
		t.Fatalf("%d strings kept, want at most %d", n, internMax)
	}
	a := in.string(string([]byte("again")))
	if b := in.string(string([]byte("again"))); !sameString(a, b) {
		t.Error("after emptying: equal strings not shared")
	}
	long := string(make([]byte, internLen+1))
	in.string(long)
	if _, ok := in.strs[long]; ok {
		t.Errorf("a string of %d bytes kept, want at most %d", len(long), internLen)
	}
}
