// Package condition owns the durable status microscaling leaves on each
// managed Deployment: one condition of type microscaling.com/Scaling in the
// Deployment's status.conditions, which `kubectl describe` and `kubectl get
// -o custom-columns` show for as long as it is true (an Event expires with
// the API server's --event-ttl). It is written through the status
// subresource, so the spec is never touched; only when it changes; at most
// once per interval for one Deployment (the latest state wins); on a client
// of its own, so its writes never take the rate the /scale writes need.
package condition

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/informer/snapshot"
)

// Type is the condition's type in a Deployment's status.conditions.
const Type appsv1.DeploymentConditionType = "microscaling.com/Scaling"

// MaxMessage bounds a condition's message, in bytes.
const MaxMessage = 512

// Condition is what microscaling says of one Deployment: Status True while
// it follows the load, False while something holds it (Reason says what).
type Condition struct {
	Status  corev1.ConditionStatus
	Reason  string
	Message string
}

// Find returns the microscaling condition d carries, or nil.
func Find(d *appsv1.Deployment) *appsv1.DeploymentCondition {
	for i := range d.Status.Conditions {
		if d.Status.Conditions[i].Type == Type {
			return &d.Status.Conditions[i]
		}
	}
	return nil
}

type key struct{ namespace, name string }

// entry is what the Writer knows of one Deployment's condition.
type entry struct {
	want    Condition
	remove  bool        // take the condition away (the Deployment was released)
	written Condition   // what the Deployment carries, as far as is known
	has     bool        // written is known
	since   metav1.Time // written's lastTransitionTime
	at      time.Time   // when written was written
	changed time.Time   // when want's status or reason last changed
}

// Writer keeps each Deployment's condition as it was last Set, writing in
// the background. Its methods never block on the API server.
type Writer struct {
	client kubernetes.Interface
	clock  clock.Clock
	// every is the least time between two writes to one Deployment.
	every time.Duration
	queue workqueue.TypedRateLimitingInterface[key]

	mu      sync.Mutex
	entries map[key]*entry
}

// NewWriter makes a Writer that patches through client.
func NewWriter(client kubernetes.Interface, clk clock.WithTicker, every time.Duration) *Writer {
	return &Writer{
		client: client, clock: clk, every: every, entries: map[key]*entry{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[key](500*time.Millisecond, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "microscaling_conditions", Clock: clk}),
	}
}

// Set asks for d to carry c. The message is cut to MaxMessage.
func (w *Writer) Set(d *snapshot.Object, c Condition) {
	c.Message = truncate(c.Message, MaxMessage)
	k := key{d.Namespace, d.Name}
	w.mu.Lock()
	e := w.entry(k, d)
	if e.has && e.written == c && !e.remove && w.clock.Since(e.at) > w.every && !carries(d, c) {
		// Written long enough ago for the cache to show it, and it does
		// not: someone took it away or changed it. Written again.
		e.has = false
		e.want = Condition{}
	}
	if e.want == c && !e.remove {
		w.mu.Unlock()
		return
	}
	if e.want.Status != c.Status || e.want.Reason != c.Reason {
		e.changed = w.clock.Now()
	}
	e.want, e.remove = c, false
	if e.has && e.written == c {
		w.mu.Unlock()
		return
	}
	// At most one write per Every: a member whose reason flaps writes no
	// faster, and the write carries the latest.
	wait := w.every - w.clock.Since(e.at)
	w.mu.Unlock()
	if wait > 0 {
		w.queue.AddAfter(k, wait)
	} else {
		w.queue.Add(k)
	}
}

// Clear takes the condition away from d (microscaling no longer scales
// it), if it carries one.
func (w *Writer) Clear(d *snapshot.Object) {
	k := key{d.Namespace, d.Name}
	w.mu.Lock()
	e, ok := w.entries[k]
	if !ok && d.Condition == nil {
		w.mu.Unlock()
		return
	}
	e = w.entry(k, d)
	e.remove, e.want = true, Condition{}
	w.mu.Unlock()
	w.queue.Add(k)
}

// Forget drops what is known of a Deployment that is gone.
func (w *Writer) Forget(namespace, name string) {
	w.mu.Lock()
	delete(w.entries, key{namespace, name})
	w.mu.Unlock()
}

// carries reports whether d's cached status shows c.
func carries(d *snapshot.Object, c Condition) bool {
	cur := d.Condition
	return cur != nil && cur.Status == string(c.Status) && cur.Reason == c.Reason && cur.Message == c.Message
}

// entry returns k's entry, made from what d carries when new; w.mu is held.
func (w *Writer) entry(k key, d *snapshot.Object) *entry {
	if e, ok := w.entries[k]; ok {
		return e
	}
	e := &entry{}
	if cur := d.Condition; cur != nil {
		e.written, e.has = Condition{corev1.ConditionStatus(cur.Status), cur.Reason, cur.Message}, true
		e.since, e.at = metav1.NewTime(cur.Since), cur.Updated
		e.want = e.written
	}
	w.entries[k] = e
	return e
}

// Run writes with workers goroutines until ctx ends.
func (w *Writer) Run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	w.queue.ShutDown()
	wg.Wait()
}

func (w *Writer) next(ctx context.Context) bool {
	k, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(k)
	if err := w.write(ctx, k); err != nil {
		klog.FromContext(ctx).V(2).Info("condition not written", "deployment", klog.KRef(k.namespace, k.name), "err", err)
		w.queue.AddRateLimited(k)
		return true
	}
	w.queue.Forget(k)
	return true
}

// write brings k's condition to what was last asked for.
func (w *Writer) write(ctx context.Context, k key) error {
	now := w.clock.Now()
	w.mu.Lock()
	e, ok := w.entries[k]
	if !ok || (!e.remove && e.has && e.written == e.want) {
		w.mu.Unlock()
		return nil
	}
	want, remove, since := e.want, e.remove, e.since
	if !e.has || e.written.Status != want.Status || e.written.Reason != want.Reason {
		since = metav1.NewTime(now)
		if !e.changed.IsZero() {
			since = metav1.NewTime(e.changed)
		}
	}
	w.mu.Unlock()
	body, err := patch(want, remove, since, metav1.NewTime(now))
	if err != nil {
		return err
	}
	_, err = w.client.AppsV1().Deployments(k.namespace).Patch(ctx, k.name, types.StrategicMergePatchType, body,
		metav1.PatchOptions{FieldManager: "microscaling"}, "status")
	if apierrors.IsNotFound(err) {
		w.Forget(k.namespace, k.name)
		return nil
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.entries[k] != e {
		return nil // forgotten meanwhile
	}
	if remove {
		if e.remove {
			delete(w.entries, k)
		}
		return nil
	}
	e.written, e.has, e.since, e.at = want, true, since, now
	return nil
}

// patch is the strategic merge patch of status.conditions that sets c (or
// removes the condition): conditions merge by type, so no other condition
// is touched and nothing needs reading first.
func patch(c Condition, remove bool, since, now metav1.Time) ([]byte, error) {
	var cond any
	if remove {
		cond = map[string]string{"type": string(Type), "$patch": "delete"}
	} else {
		cond = appsv1.DeploymentCondition{Type: Type, Status: c.Status, Reason: c.Reason, Message: c.Message,
			LastUpdateTime: now, LastTransitionTime: since}
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []any{cond}}})
	if err != nil {
		return nil, fmt.Errorf("condition patch: %w", err)
	}
	return body, nil
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n-len("…")]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
