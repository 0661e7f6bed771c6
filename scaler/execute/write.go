package execute

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
)

// ScaleWriter writes through the /scale subresource.
type ScaleWriter struct {
	Client kubernetes.Interface
}

// Scale sets replicas. The first try uses the cached resourceVersion (one
// request). On a conflict it reads the Deployment again: only if nothing
// but its status moved on (the same generation, the same
// microscaling.com/* annotations, the replicas the decision started from)
// does it try again, up to three times. Anything else is a newer intent (a
// `kubectl scale`, an edited template, `paused` or a lowered max): the write
// ends with the conflict, and the next tick decides from fresh state.
func (w ScaleWriter) Scale(ctx context.Context, d *snapshot.Object, replicas int32) error {
	s := &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: d.Name, Namespace: d.Namespace, ResourceVersion: d.Version},
		Spec:       autoscalingv1.ScaleSpec{Replicas: replicas},
	}
	api := w.Client.AppsV1().Deployments(d.Namespace)
	var err error
	for range 3 {
		if _, err = api.UpdateScale(ctx, d.Name, s, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			break
		}
		cur, gerr := api.Get(ctx, d.Name, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("reading %s/%s after a conflict: %w", d.Namespace, d.Name, gerr)
		}
		if what := changed(d, cur); what != "" {
			return fmt.Errorf("not writing /scale of %s/%s to %d: %s meanwhile: %w", d.Namespace, d.Name, replicas, what, err)
		}
		s.ResourceVersion = cur.ResourceVersion
	}
	if err != nil {
		// Wrapped with %w: callers still see apierrors.IsNotFound and the like.
		return fmt.Errorf("writing /scale of %s/%s to %d: %w", d.Namespace, d.Name, replicas, err)
	}
	return nil
}

// changed says what of a Deployment's intent moved from decided to cur;
// empty when only its status did.
func changed(decided *snapshot.Object, cur *appsv1.Deployment) string {
	from, now := decided.Replicas, annotations.Replicas(cur.Spec.Replicas)
	switch {
	case now != from:
		return fmt.Sprintf("replicas changed to %d", now)
	case cur.Generation != decided.Generation:
		return "its spec changed"
	case !annotations.SameManaged(decided.Annotations, cur.Annotations):
		return "its microscaling.com/ annotations changed"
	}
	return ""
}
