package execute

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/microscaling/microscaling/informer/snapshot"
)

// TestScaleConflict: a conflict because only the status moved on is
// retried with the new resourceVersion; a conflict because anything of the
// Deployment's intent changed (its replicas, its spec, its microscaling.com/
// annotations) is returned, never overwritten.
func TestScaleConflict(t *testing.T) {
	three, seven := int32(3), int32(7)
	decided := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", ResourceVersion: "1", Generation: 4,
		Annotations: map[string]string{"microscaling.com/queue": "nsq://h:1/t/c"}}, Spec: appsv1.DeploymentSpec{Replicas: &three}}
	tests := []struct {
		name      string
		server    func(d *appsv1.Deployment) // what the server holds after the conflict
		wantErr   string
		wantWrite bool // a second update with the server's resourceVersion
	}{
		{name: "status moved on: retried", server: func(d *appsv1.Deployment) { d.Status.ReadyReplicas = 3 }, wantWrite: true},
		{name: "someone scaled meanwhile: not overwritten", server: func(d *appsv1.Deployment) { d.Spec.Replicas = &seven }, wantErr: "replicas changed to 7 meanwhile"},
		{name: "paused meanwhile: not overwritten", server: func(d *appsv1.Deployment) { d.Annotations["microscaling.com/paused"] = "true" }, wantErr: "annotations changed meanwhile"},
		{name: "template edited meanwhile: not overwritten", server: func(d *appsv1.Deployment) { d.Generation = 5 }, wantErr: "its spec changed meanwhile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			var updates []string
			client.PrependReactor("update", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if a.GetSubresource() != "scale" {
					return false, nil, nil
				}
				s := a.(k8stesting.UpdateAction).GetObject().(*autoscalingv1.Scale)
				updates = append(updates, s.ResourceVersion)
				if s.ResourceVersion == "1" {
					return true, nil, apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, s.Name, nil)
				}
				return true, s, nil
			})
			client.PrependReactor("get", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
				d := decided.DeepCopy()
				d.ResourceVersion = "2"
				tc.server(d)
				return true, d, nil
			})
			err := ScaleWriter{Client: client}.Scale(context.Background(), &snapshot.Object{Namespace: decided.Namespace, Name: decided.Name, Version: decided.ResourceVersion, Generation: decided.Generation, Replicas: three, Annotations: decided.Annotations}, 5)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("err = %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !apierrors.IsConflict(err)):
				t.Fatalf("err = %v, want a conflict saying %q", err, tc.wantErr)
			}
			if got := len(updates) == 2 && updates[1] == "2"; got != tc.wantWrite {
				t.Errorf("updates with resourceVersions %v; want a retry with 2: %v", updates, tc.wantWrite)
			}
		})
	}
}
