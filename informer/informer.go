// Package informer watches Deployments, Nodes and Pods with shared
// informers, keeps an index from namespace/group to the managed Deployments
// of each group, and turns the cluster's nodes and pods into the plain
// capacity values the scaler's allocation takes.
package informer

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/labels"
)

// GroupIndex is the name of the Deployment index by namespace/group.
const GroupIndex = "microscaling-group"

// GroupKey is the key of a group: namespace/group.
func GroupKey(d *appsv1.Deployment) (string, bool) {
	if !annotations.Managed(d.Annotations) {
		return "", false
	}
	g := d.Annotations[annotations.Group]
	if g == "" {
		g = d.Name
	}
	return d.Namespace + "/" + g, true
}

func groupIndexFunc(obj any) ([]string, error) {
	d, ok := obj.(*appsv1.Deployment)
	if !ok {
		return nil, nil
	}
	if k, ok := GroupKey(d); ok {
		return []string{k}, nil
	}
	return nil, nil
}

// Informers are the controller's shared informers and listers.
type Informers struct {
	factories   []informers.SharedInformerFactory
	deployments cache.SharedIndexInformer
	Deployments appslisters.DeploymentLister
	Nodes       corelisters.NodeLister
	Pods        corelisters.PodLister
	synced      []cache.InformerSynced
	selectors   sync.Map // Deployment UID -> compiled selector at a resourceVersion

	generation atomic.Uint64 // counts node and pod events: capacity is stale when it moves
	usageMu    sync.Mutex    // guards usage
	usage      *Usage        // the last capacity read, at some generation
}

// New makes the informers; namespace "" watches all. onGroup, if not nil, is
// called with every group key whose members may have changed.
func New(client kubernetes.Interface, namespace string, onGroup func(key string)) (*Informers, error) {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(namespace), informers.WithTransform(slim))
	// Nodes are cluster scoped; a namespaced factory still lists them all.
	nf := f
	if namespace != "" {
		nf = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slim))
	}
	inf := &Informers{}
	inf.deployments = f.Apps().V1().Deployments().Informer()
	if err := inf.deployments.AddIndexers(cache.Indexers{GroupIndex: groupIndexFunc}); err != nil {
		return nil, fmt.Errorf("adding group index: %w", err)
	}
	_, err := inf.deployments.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { enqueue(obj, onGroup) },
		UpdateFunc: func(old, cur any) {
			o, n := old.(*appsv1.Deployment), cur.(*appsv1.Deployment)
			if relevantSame(o, n) {
				return
			}
			enqueue(old, onGroup)
			enqueue(cur, onGroup)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			enqueue(obj, onGroup)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("adding deployment handler: %w", err)
	}
	inf.Deployments = f.Apps().V1().Deployments().Lister()
	nodes := nf.Core().V1().Nodes()
	pods := f.Core().V1().Pods()
	inf.Nodes, inf.Pods = nodes.Lister(), pods.Lister()
	bump := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { inf.generation.Add(1) },
		UpdateFunc: func(any, any) { inf.generation.Add(1) },
		DeleteFunc: func(any) { inf.generation.Add(1) },
	}
	for _, i := range []cache.SharedIndexInformer{nodes.Informer(), pods.Informer()} {
		if _, err := i.AddEventHandler(bump); err != nil {
			return nil, fmt.Errorf("adding capacity handler: %w", err)
		}
	}
	inf.synced = []cache.InformerSynced{inf.deployments.HasSynced, nodes.Informer().HasSynced, pods.Informer().HasSynced}
	inf.factories = []informers.SharedInformerFactory{f}
	if nf != f {
		inf.factories = append(inf.factories, nf)
	}
	return inf, nil
}

// Run starts the informers and waits for their caches; it returns false if
// ctx ended first. The informers stop when ctx ends.
func (inf *Informers) Run(ctx context.Context) bool {
	for _, f := range inf.factories {
		f.Start(ctx.Done())
	}
	return cache.WaitForCacheSync(ctx.Done(), inf.synced...)
}

// Synced reports whether every cache has synced.
func (inf *Informers) Synced() bool {
	for _, s := range inf.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Shutdown waits for the informers' goroutines after ctx of Run ended.
func (inf *Informers) Shutdown() {
	for _, f := range inf.factories {
		f.Shutdown()
	}
}

// AddDeploymentHandler adds another handler to the Deployment informer.
func (inf *Informers) AddDeploymentHandler(h cache.ResourceEventHandler) error {
	if _, err := inf.deployments.AddEventHandler(h); err != nil {
		return fmt.Errorf("adding deployment handler: %w", err)
	}
	return nil
}

// GroupKeys lists every group key.
func (inf *Informers) GroupKeys() []string {
	return inf.deployments.GetIndexer().ListIndexFuncValues(GroupIndex)
}

// Members returns the managed Deployments of a group, sorted by name. They
// come from the cache: callers must not change them.
func (inf *Informers) Members(key string) ([]*appsv1.Deployment, error) {
	objs, err := inf.deployments.GetIndexer().ByIndex(GroupIndex, key)
	if err != nil {
		return nil, fmt.Errorf("listing group %s: %w", key, err)
	}
	out := make([]*appsv1.Deployment, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*appsv1.Deployment))
	}
	slices.SortFunc(out, func(a, b *appsv1.Deployment) int { return cmpString(a.Name, b.Name) })
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func enqueue(obj any, onGroup func(string)) {
	if onGroup == nil {
		return
	}
	if d, ok := obj.(*appsv1.Deployment); ok {
		if k, ok := GroupKey(d); ok {
			onGroup(k)
		}
	}
}

// relevantSame reports whether nothing the controller reads changed: the
// microscaling.com/* annotations, replicas asked for and ready.
func relevantSame(a, b *appsv1.Deployment) bool {
	return ptrEq(a.Spec.Replicas, b.Spec.Replicas) &&
		a.Status.ReadyReplicas == b.Status.ReadyReplicas &&
		maps.EqualFunc(ours(a.Annotations), ours(b.Annotations), func(x, y string) bool { return x == y })
}

func ptrEq(a, b *int32) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func ours(ann map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range ann {
		if strings.HasPrefix(k, annotations.Prefix) {
			out[k] = v
		}
	}
	return out
}

// slim drops what the controller never reads, to keep the caches small:
// managedFields everywhere; all of a Deployment but its identity, our
// annotations, replicas, selector and what placement and label sync need of
// its pod template; all of a Pod but its placement, requests, phase and
// scheduling condition.
func slim(obj any) (any, error) {
	if a, ok := obj.(metav1.ObjectMetaAccessor); ok {
		a.GetObjectMeta().SetManagedFields(nil)
	}
	if d, ok := obj.(*appsv1.Deployment); ok {
		return slimDeployment(d), nil
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	for _, c := range p.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Resources: corev1.ResourceRequirements{Requests: c.Resources.Requests}})
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			out.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status, Reason: c.Reason}}
		}
	}
	return out, nil
}

func slimDeployment(d *appsv1.Deployment) *appsv1.Deployment {
	var ann map[string]string
	for k, v := range d.Annotations {
		if strings.HasPrefix(k, annotations.Prefix) || strings.HasPrefix(k, labels.ImageLabelsPrefix) {
			if ann == nil {
				ann = map[string]string{}
			}
			ann[k] = v
		}
	}
	t := &d.Spec.Template.Spec
	out := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name: d.Name, Namespace: d.Namespace, UID: d.UID, ResourceVersion: d.ResourceVersion,
			Generation: d.Generation, Annotations: ann, DeletionTimestamp: d.DeletionTimestamp,
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: d.Spec.Replicas,
			Selector: d.Spec.Selector,
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				NodeSelector: t.NodeSelector, Affinity: t.Affinity, Tolerations: t.Tolerations,
				ImagePullSecrets: t.ImagePullSecrets, ServiceAccountName: t.ServiceAccountName,
			}},
		},
		Status: appsv1.DeploymentStatus{ReadyReplicas: d.Status.ReadyReplicas},
	}
	for _, c := range t.Containers {
		out.Spec.Template.Spec.Containers = append(out.Spec.Template.Spec.Containers, corev1.Container{
			Name: c.Name, Image: c.Image, Resources: corev1.ResourceRequirements{Requests: c.Resources.Requests}})
	}
	return out
}
