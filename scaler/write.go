package scaler

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Writer sets a Deployment's replicas.
type Writer interface {
	Scale(ctx context.Context, d *appsv1.Deployment, replicas int32) error
}

// ScaleWriter writes through the /scale subresource.
type ScaleWriter struct {
	Client kubernetes.Interface
}

// Scale sets replicas. The first try uses the cached resourceVersion (one
// request). On a conflict it reads /scale again: if only the status moved on
// (the replicas asked for are still those the decision started from) it
// tries again, up to three times; if someone else changed the replicas, it
// gives up with the conflict, so a concurrent `kubectl scale` is never
// overwritten by a decision made before it. The next tick decides afresh.
func (w ScaleWriter) Scale(ctx context.Context, d *appsv1.Deployment, replicas int32) error {
	s := &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: d.Name, Namespace: d.Namespace, ResourceVersion: d.ResourceVersion},
		Spec:       autoscalingv1.ScaleSpec{Replicas: replicas},
	}
	from := int32(1)
	if d.Spec.Replicas != nil {
		from = *d.Spec.Replicas
	}
	api := w.Client.AppsV1().Deployments(d.Namespace)
	var err error
	for range 3 {
		if _, err = api.UpdateScale(ctx, d.Name, s, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			break
		}
		cur, gerr := api.GetScale(ctx, d.Name, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("reading /scale of %s/%s after a conflict: %w", d.Namespace, d.Name, gerr)
		}
		if cur.Spec.Replicas != from {
			return fmt.Errorf("not writing /scale of %s/%s to %d: replicas changed to %d meanwhile: %w", d.Namespace, d.Name, replicas, cur.Spec.Replicas, err)
		}
		s.ResourceVersion = cur.ResourceVersion
	}
	if err != nil {
		// Wrapped with %w: callers still see apierrors.IsNotFound and the like.
		return fmt.Errorf("writing /scale of %s/%s to %d: %w", d.Namespace, d.Name, replicas, err)
	}
	return nil
}
