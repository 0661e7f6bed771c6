package labels

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/tools/reference"
	"k8s.io/klog/v2"
)

// NewSyncRecorder returns an EventRecorder that creates each Event before it
// returns. A one-shot command exits right after its work, and the library's
// broadcaster would drop the Events still queued; the controller uses the
// library's.
func NewSyncRecorder(ctx context.Context, client kubernetes.Interface, component string) record.EventRecorder {
	return &syncRecorder{ctx: ctx, client: client, source: corev1.EventSource{Component: component}}
}

type syncRecorder struct {
	ctx    context.Context
	client kubernetes.Interface
	source corev1.EventSource
}

func (r *syncRecorder) Event(obj runtime.Object, eventtype, reason, message string) {
	ref, err := reference.GetReference(scheme.Scheme, obj)
	if err != nil {
		klog.FromContext(r.ctx).Error(err, "event not recorded", "reason", reason)
		return
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: ref.Name + ".", Namespace: ref.Namespace},
		InvolvedObject: *ref, Reason: reason, Message: message, Type: eventtype, Source: r.source,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := r.client.CoreV1().Events(ref.Namespace).Create(r.ctx, ev, metav1.CreateOptions{}); err != nil {
		klog.FromContext(r.ctx).Error(err, "event not recorded", "reason", reason, "object", klog.KRef(ref.Namespace, ref.Name))
	}
}

func (r *syncRecorder) Eventf(obj runtime.Object, eventtype, reason, format string, args ...any) {
	r.Event(obj, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r *syncRecorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventtype, reason, format string, args ...any) {
	r.Eventf(obj, eventtype, reason, format, args...)
}
