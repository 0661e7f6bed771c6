package labels

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A Deployment listing 20,000 imagePullSecrets (or a few, and its service
// account the rest) gets a clear error and not one Secret is read; a name
// listed twice is read once.
func TestPullSecretsAreBounded(t *testing.T) {
	refs := func(n int, prefix string) []corev1.LocalObjectReference {
		out := make([]corev1.LocalObjectReference, n)
		for i := range out {
			out[i].Name = fmt.Sprintf("%s%d", prefix, i)
		}
		return out
	}
	for _, tc := range []struct {
		name            string
		pod, account    []corev1.LocalObjectReference
		wantErr         string
		wantSecretReads int
	}{
		{name: "20,000 on the pod template", pod: refs(20000, "s"), wantErr: "20000 imagePullSecrets: at most 16"},
		{name: "10 and 10 more on the service account", pod: refs(10, "p"), account: refs(10, "a"), wantErr: "20 imagePullSecrets with the service account's: at most 16"},
		{name: "one name three times is one", pod: append(refs(1, "same"), append(refs(1, "same"), refs(1, "same")...)...), wantSecretReads: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "default"}, ImagePullSecrets: tc.account})
			reads := 0
			client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
				reads++
				return false, nil, nil
			})
			s := &Syncer{Client: client, Resolver: &Resolver{TagTTL: time.Minute}}
			d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "d"}}
			d.Spec.Template.Spec.ImagePullSecrets = tc.pod
			_, err := s.keychain(t.Context(), d)
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if reads != tc.wantSecretReads {
				t.Errorf("%d Secrets read, want %d", reads, tc.wantSecretReads)
			}
		})
	}
}
