// Package informer is the controller's cluster adapter: it watches
// Deployments, Nodes, Pods, RuntimeClasses, PriorityClasses and
// HorizontalPodAutoscalers with shared informers, keeps the managed
// Deployments indexed by group (annotations.GroupKey), and hands the loop
// each tick a plain snapshot.Snapshot: every group's members with their
// annotations parsed, pod priority and other autoscalers, and the node room
// they share (policy.Room), computed when asked. It imports nothing of the
// scaler but the policy's types.
package informer

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	nodelisters "k8s.io/client-go/listers/node/v1"
	schedulinglisters "k8s.io/client-go/listers/scheduling/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
)

// groupIndex is the name of the Deployment index by namespace/group.
const groupIndex = "microscaling-group"

// targetIndex is the name of the HorizontalPodAutoscaler index by the
// Deployment it targets, namespace/name.
const targetIndex = "microscaling-hpa-target"

func hpaTarget(obj any) ([]string, error) {
	h, ok := obj.(*autoscalingv2.HorizontalPodAutoscaler)
	if !ok || h.Spec.ScaleTargetRef.Kind != "Deployment" {
		return nil, nil
	}
	if gv, err := schema.ParseGroupVersion(h.Spec.ScaleTargetRef.APIVersion); err != nil || gv.Group != "apps" {
		return nil, nil // not a Deployment of apps: not ours to index
	}
	return []string{h.Namespace + "/" + h.Spec.ScaleTargetRef.Name}, nil
}

// Autoscalers names the HorizontalPodAutoscalers (KEDA's keda-hpa-* among
// them) that target the Deployment namespace/name, sorted.
func (inf *Informers) Autoscalers(namespace, name string) []string {
	if inf.hpaCount.Load() <= 0 {
		return nil
	}
	objs, err := inf.hpas.GetIndexer().ByIndex(targetIndex, namespace+"/"+name)
	if err != nil || len(objs) == 0 { // err: no such index, which New adds
		return nil
	}
	names := make([]string, 0, len(objs))
	for _, o := range objs {
		names = append(names, o.(*autoscalingv2.HorizontalPodAutoscaler).Name)
	}
	slices.Sort(names)
	return names
}

// groupKey is the key of a managed Deployment's group; false when it is
// not managed. An invalid group value has a key of its own that the loop
// lists but never decides.
func groupKey(d *appsv1.Deployment) (string, bool) {
	if !annotations.Managed(d.Annotations) {
		return "", false
	}
	k, _ := annotations.GroupKey(d.Namespace, d.Name, d.Annotations)
	return k, true
}

func groupIndexFunc(obj any) ([]string, error) {
	if d, ok := obj.(*appsv1.Deployment); ok {
		if k, ok := groupKey(d); ok {
			return []string{k}, nil
		}
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
	// RuntimeClasses give the overhead admission adds to a template's pods.
	RuntimeClasses nodelisters.RuntimeClassLister
	// PriorityClasses tell the priority a remainder's pods run at.
	PriorityClasses schedulinglisters.PriorityClassLister
	// hpas are the HorizontalPodAutoscalers, indexed by the Deployment they
	// target; hpaCount counts them (most clusters have none to look up).
	hpas      cache.SharedIndexInformer
	hpaCount  atomic.Int64
	synced    []cache.InformerSynced
	selectors sync.Map // Deployment UID -> compiled selector at a resourceVersion

	generation atomic.Uint64         // counts node, pod and RuntimeClass events: rooms are stale when it moves
	usageMu    sync.Mutex            // serializes computing a new usage
	last       atomic.Pointer[usage] // the last usage read, at some generation
	roomCache

	// QueuesInNamespace, set before Run, makes a member's annotations valid
	// only when they name queues of its own namespace among in-cluster
	// Service names (annotations.QueuesInNamespace).
	QueuesInNamespace bool

	groupsMu sync.Mutex // guards snap, dirty and allDirty
	// snap is the last answer of Snapshot, shared read-only; dirty are the
	// group keys whose members changed since, allDirty says every group did
	// (a PriorityClass changed).
	snap     snapshot.Snapshot
	dirty    map[string]bool
	allDirty bool
	parses   atomic.Uint64 // counts parses: each member's Parsed
}

// New makes the informers; namespace "" watches all. Of the namespaces
// watched, only shard's are managed: the Deployments and autoscalers of
// the others are cached as their names alone, and never grouped. Pods are
// cached in every namespace, as node room counts them all.
func New(client kubernetes.Interface, namespace string, shard Shard) (*Informers, error) {
	in := newInterner()
	transform := func(obj any) (any, error) { return slim(obj, shard, in) }
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(namespace), informers.WithTransform(transform))
	// Nodes are cluster scoped; a namespaced factory still lists them all.
	nf := f
	if namespace != "" {
		nf = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(transform))
	}
	inf := &Informers{dirty: map[string]bool{}, roomCache: roomCache{rooms: map[types.UID]roomEntry{}}}
	inf.deployments = f.Apps().V1().Deployments().Informer()
	if err := inf.deployments.AddIndexers(cache.Indexers{groupIndex: groupIndexFunc}); err != nil {
		return nil, fmt.Errorf("adding group index: %w", err)
	}
	_, err := inf.deployments.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    inf.markDirty,
		UpdateFunc: func(old, cur any) { inf.markDirty(old); inf.markDirty(cur) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			inf.markDirty(obj)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("adding deployment handler: %w", err)
	}
	inf.Deployments = f.Apps().V1().Deployments().Lister()
	nodes := nf.Core().V1().Nodes()
	pods := f.Core().V1().Pods()
	rcs := nf.Node().V1().RuntimeClasses()
	inf.Nodes, inf.Pods, inf.RuntimeClasses = nodes.Lister(), pods.Lister(), rcs.Lister()
	for _, i := range []cache.SharedIndexInformer{nodes.Informer(), pods.Informer(), rcs.Informer()} {
		if _, err := i.AddEventHandler(counter(&inf.generation)); err != nil {
			return nil, fmt.Errorf("adding room handler: %w", err)
		}
	}
	pcs := nf.Scheduling().V1().PriorityClasses()
	inf.PriorityClasses = pcs.Lister()
	if _, err := pcs.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { inf.markAll() },
		UpdateFunc: func(any, any) { inf.markAll() },
		DeleteFunc: func(any) { inf.markAll() },
	}); err != nil {
		return nil, fmt.Errorf("adding priority class handler: %w", err)
	}
	inf.hpas = f.Autoscaling().V2().HorizontalPodAutoscalers().Informer()
	if err := inf.hpas.AddIndexers(cache.Indexers{targetIndex: hpaTarget}); err != nil {
		return nil, fmt.Errorf("adding autoscaler index: %w", err)
	}
	if _, err := inf.hpas.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { inf.hpaCount.Add(1); inf.markTarget(obj) },
		UpdateFunc: func(old, cur any) { inf.markTarget(old); inf.markTarget(cur) },
		DeleteFunc: func(obj any) { inf.hpaCount.Add(-1); inf.markTarget(obj) },
	}); err != nil {
		return nil, fmt.Errorf("adding autoscaler handler: %w", err)
	}
	inf.synced = []cache.InformerSynced{inf.deployments.HasSynced, nodes.Informer().HasSynced, pods.Informer().HasSynced, rcs.Informer().HasSynced, inf.hpas.HasSynced, pcs.Informer().HasSynced}
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

// counter counts an informer's events in n. Handlers run after the cache
// has the change, so a reader that sees n unchanged since it listed the cache
// has seen every change.
func counter(n *atomic.Uint64) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { n.Add(1) },
		UpdateFunc: func(any, any) { n.Add(1) },
		DeleteFunc: func(any) { n.Add(1) },
	}
}

// markAll marks every group as changed: a remainder's pod priority is
// looked up again.
func (inf *Informers) markAll() {
	inf.groupsMu.Lock()
	inf.allDirty = true
	inf.groupsMu.Unlock()
}

func (inf *Informers) markDirty(obj any) {
	if d, ok := obj.(*appsv1.Deployment); ok {
		if k, ok := groupKey(d); ok {
			inf.groupsMu.Lock()
			inf.dirty[k] = true
			inf.groupsMu.Unlock()
		}
	}
}

// slim drops, in place, what the controller never reads, to keep the
// caches small, and shares equal strings and requests (in):
// managedFields everywhere; all of a Deployment but its identity, our
// annotations, replicas, selector and what placement and label sync need of
// its pod template; all of a Pod but its placement, requests, phase and
// scheduling condition. Deployments and autoscalers of namespaces another
// shard manages keep their identity only.
func slim(obj any, shard Shard, in *interner) (any, error) {
	if a, ok := obj.(metav1.ObjectMetaAccessor); ok {
		a.GetObjectMeta().SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if !shard.Owns(o.Namespace) {
			return &appsv1.Deployment{ObjectMeta: identity(o.ObjectMeta)}, nil
		}
		return slimDeployment(o, in), nil
	case *autoscalingv2.HorizontalPodAutoscaler:
		if !shard.Owns(o.Namespace) {
			return &autoscalingv2.HorizontalPodAutoscaler{ObjectMeta: identity(o.ObjectMeta)}, nil
		}
		return o, nil
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	// In place, as a Deployment. Idle-first reads and writes the deletion
	// cost (and matches consumers by IP); no other annotation is kept.
	var cost map[string]string
	if v, ok := p.Annotations[corev1.PodDeletionCost]; ok {
		cost = map[string]string{corev1.PodDeletionCost: v}
	}
	p.ObjectMeta = metav1.ObjectMeta{
		Name: p.Name, Namespace: in.string(p.Namespace), UID: p.UID, ResourceVersion: p.ResourceVersion,
		Labels: p.Labels, Annotations: cost, DeletionTimestamp: p.DeletionTimestamp,
	}
	p.Spec = corev1.PodSpec{
		NodeName: in.string(p.Spec.NodeName), Overhead: p.Spec.Overhead, Resources: p.Spec.Resources,
		InitContainers: requestsOnly(p.Spec.InitContainers, in), Containers: requestsOnly(p.Spec.Containers, in),
	}
	var scheduled []corev1.PodCondition
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			scheduled = []corev1.PodCondition{{Type: c.Type, Status: c.Status, Reason: c.Reason}}
		}
	}
	p.Status = corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, Conditions: scheduled}
	return p, nil
}

// identity is what is kept of an object another shard manages: enough for
// the cache to track it, nothing it could be managed by.
func identity(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}

// slimDeployment keeps of d, in place, its identity, our annotations and
// condition, replicas, selector, ready replicas, and what placement and
// label sync need of its pod template. In place: the decoded object is the
// informer's own, and a copy left each decoded struct as garbage between
// the live ones (at 30,000 Deployments the heap's spans held both).
func slimDeployment(d *appsv1.Deployment, in *interner) *appsv1.Deployment {
	d.ObjectMeta = metav1.ObjectMeta{
		Name: d.Name, Namespace: in.string(d.Namespace), UID: d.UID, ResourceVersion: d.ResourceVersion,
		Generation: d.Generation, Annotations: in.annotations(d.Annotations, annotations.Ours), DeletionTimestamp: d.DeletionTimestamp,
	}
	t := d.Spec.Template.Spec // a copy of the struct; its slices are d's own
	for i, c := range t.Containers {
		t.Containers[i] = corev1.Container{Name: in.string(c.Name), Image: in.string(c.Image),
			Resources: corev1.ResourceRequirements{Requests: in.requests(c.Resources.Requests)}}
	}
	d.Spec = appsv1.DeploymentSpec{
		Replicas: d.Spec.Replicas,
		Selector: d.Spec.Selector,
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			NodeSelector: t.NodeSelector, Affinity: t.Affinity, Tolerations: t.Tolerations,
			ImagePullSecrets: t.ImagePullSecrets, ServiceAccountName: in.string(t.ServiceAccountName),
			RuntimeClassName: t.RuntimeClassName, Overhead: t.Overhead, Resources: t.Resources,
			PriorityClassName: in.string(t.PriorityClassName),
			InitContainers:    requestsOnly(t.InitContainers, in),
			Containers:        t.Containers,
		}},
	}
	// microscaling's own condition, so that the condition writer sees it
	// written (without it, every condition was written again each 10 s).
	// A slice of its own: the decoded one holds every condition.
	var ours []appsv1.DeploymentCondition
	for _, c := range d.Status.Conditions {
		if annotations.Ours(string(c.Type)) {
			ours = append(ours, c)
		}
	}
	d.Status = appsv1.DeploymentStatus{ReadyReplicas: d.Status.ReadyReplicas, Conditions: ours}
	return d
}

// requestsOnly keeps, in place, of containers what the pod's requests are
// made of: their requests (shared) and (for native sidecars) restart
// policy.
func requestsOnly(cs []corev1.Container, in *interner) []corev1.Container {
	if len(cs) == 0 {
		return nil
	}
	for i, c := range cs {
		cs[i] = corev1.Container{Name: in.string(c.Name), RestartPolicy: c.RestartPolicy,
			Resources: corev1.ResourceRequirements{Requests: in.requests(c.Resources.Requests)}}
	}
	return cs
}
