// Package podcost marks which of a Deployment's pods a scale-down should
// take first: the consumers holding the fewest messages. It sets each
// pod's controller.kubernetes.io/pod-deletion-cost, which the ReplicaSet
// controller reads when it picks the pods to delete, to the messages the
// pod's consumer holds, so that an idle consumer goes before a busy one
// whose messages would time out and be delivered again.
package podcost

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/queue"
)

// Annotation is the pod annotation the ReplicaSet controller ranks pods by
// when it deletes some: lower first.
const Annotation = corev1.PodDeletionCost

// MaxPods bounds the pods one Mark looks at, and so the writes it makes.
const MaxPods = 500

// Marker writes the deletion cost of a Deployment's pods.
type Marker struct {
	// Client writes the pods (its own rate limit: a scale-down of many
	// replicas is as many writes).
	Client      kubernetes.Interface
	Pods        corelisters.PodLister
	Deployments appslisters.DeploymentLister
}

// Mark sets the deletion cost of each of d's pods (those its selector
// picks, not being deleted) to what its consumer holds in h, matched by
// the pod's name (the host name a consumer in it reports) or its IP; a pod
// whose consumer the queue does not see costs 0, as does one without the
// annotation. Only pods whose cost changes are written. It returns how
// many were, and the first error (the other pods are still written).
func (m *Marker) Mark(ctx context.Context, o *snapshot.Object, h queue.Holdings) (int, error) {
	d, err := m.Deployments.Deployments(o.Namespace).Get(o.Name)
	if err != nil {
		return 0, fmt.Errorf("finding %s/%s: %w", o.Namespace, o.Name, err)
	}
	if d.Spec.Selector == nil {
		return 0, fmt.Errorf("%s/%s has no selector", d.Namespace, d.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return 0, fmt.Errorf("selector of %s/%s: %w", d.Namespace, d.Name, err)
	}
	pods, err := m.Pods.Pods(d.Namespace).List(sel)
	if err != nil {
		return 0, fmt.Errorf("listing pods of %s/%s: %w", d.Namespace, d.Name, err)
	}
	// The writes that keep busy consumers go first (a pod without a cost
	// is among the first deleted), then those that clear a cost no longer
	// held: when ctx ends between them, the marks written still steer.
	type write struct {
		pod  *corev1.Pod
		cost string
	}
	var keep, lower []write
	for i, p := range pods {
		if i == MaxPods {
			break
		}
		if p.DeletionTimestamp != nil {
			continue
		}
		held, _ := h.Of(p.Name, p.Status.PodIP)
		want := strconv.FormatInt(min(held, math.MaxInt32), 10)
		have, ok := p.Annotations[Annotation]
		if have == want || (!ok && want == "0") {
			continue
		}
		if old, _ := strconv.ParseInt(have, 10, 64); held > old {
			keep = append(keep, write{p, want})
		} else {
			lower = append(lower, write{p, want})
		}
	}
	writes := append(keep, lower...)
	written := 0
	var errs []error
	for _, w := range writes {
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{Annotation: w.cost}}})
		if err != nil {
			return written, err
		}
		if _, err := m.Client.CoreV1().Pods(w.pod.Namespace).Patch(ctx, w.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", w.pod.Namespace, w.pod.Name, err))
			if ctx.Err() != nil {
				break // the rest would fail the same way
			}
			continue
		}
		written++
	}
	if len(errs) > 0 {
		return written, fmt.Errorf("marking %d of the pods of %s/%s: %w", len(errs), d.Namespace, d.Name, errs[0])
	}
	return written, nil
}
