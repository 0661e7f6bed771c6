package informer

import (
	"fmt"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/scaler"
)

// Usage is the cluster's schedulable nodes and what all pods request on
// each, read once and shared by every group of a tick.
type Usage struct {
	nodes []*corev1.Node
	free  []scaler.Resources // allocatable minus every pod's requests
	index map[string]int
	pods  corelistersPodLister
	// selectors is the Informers' cache of compiled selectors, by UID.
	selectors *sync.Map
	// generation is the count of node and pod events this Usage reflects.
	generation uint64

	roomsMu sync.Mutex // guards rooms
	// rooms are the rooms computed from this Usage, by the members' UIDs and
	// resourceVersions.
	rooms map[string]scaler.Room
}

type corelistersPodLister interface {
	Pods(namespace string) podNamespaceLister
}

type podNamespaceLister interface {
	List(selector labels.Selector) ([]*corev1.Pod, error)
}

// Capacity reads nodes and pods from the caches, for one tick.
//
// While no node or pod has changed, the last Usage (and the rooms it has
// computed for unchanged groups) is reused.
func (inf *Informers) Capacity() (scaler.Capacity, error) {
	gen := inf.generation.Load()
	inf.usageMu.Lock()
	defer inf.usageMu.Unlock()
	if inf.usage != nil && inf.usage.generation == gen {
		return inf.usage, nil
	}
	nodes, err := inf.Nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	u := &Usage{index: map[string]int{}, pods: podLister{inf}, selectors: &inf.selectors, generation: gen, rooms: map[string]scaler.Room{}}
	for _, n := range nodes {
		if n.Spec.Unschedulable || !ready(n) {
			continue
		}
		u.index[n.Name] = len(u.nodes)
		u.nodes = append(u.nodes, n)
		a := n.Status.Allocatable
		u.free = append(u.free, scaler.Resources{MilliCPU: a.Cpu().MilliValue(), Memory: a.Memory().Value(), Pods: a.Pods().Value()})
	}
	pods, err := inf.Pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for _, p := range pods {
		if i, ok := u.index[p.Spec.NodeName]; ok && active(p) {
			u.free[i] = sub(u.free[i], scaler.PodResources(&p.Spec))
		}
	}
	inf.usage = u
	return u, nil
}

type podLister struct{ inf *Informers }

// selector compiles a Deployment's selector once per resourceVersion.
func (u *Usage) selector(d *appsv1.Deployment) (labels.Selector, error) {
	type cached struct {
		rv  string
		sel labels.Selector
	}
	if v, ok := u.selectors.Load(d.UID); ok && v.(cached).rv == d.ResourceVersion {
		return v.(cached).sel, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("deployment %s/%s selector: %w", d.Namespace, d.Name, err)
	}
	u.selectors.Store(d.UID, cached{d.ResourceVersion, sel})
	return sel, nil
}

func (l podLister) Pods(ns string) podNamespaceLister { return l.inf.Pods.Pods(ns) }

// Room returns the room the group's members share: each node's free
// allocatable with the members' own pods given back, the nodes each member
// may land on, and each member's Pending pods.
func (u *Usage) Room(members []*appsv1.Deployment) (scaler.Room, error) {
	var key strings.Builder
	for _, d := range members {
		key.WriteString(string(d.UID) + "@" + d.ResourceVersion + ",")
	}
	u.roomsMu.Lock()
	r, ok := u.rooms[key.String()]
	u.roomsMu.Unlock()
	if ok {
		return r, nil // shared: callers only read it
	}
	r, err := u.room(members)
	if err != nil {
		return r, err
	}
	u.roomsMu.Lock()
	u.rooms[key.String()] = r
	u.roomsMu.Unlock()
	return r, nil
}

func (u *Usage) room(members []*appsv1.Deployment) (scaler.Room, error) {
	r := scaler.Room{Free: append([]scaler.Resources(nil), u.free...)}
	for _, d := range members {
		sel, err := u.selector(d)
		if err != nil {
			return r, err
		}
		pods, err := u.pods.Pods(d.Namespace).List(sel)
		if err != nil {
			return r, fmt.Errorf("listing pods of %s/%s: %w", d.Namespace, d.Name, err)
		}
		var pending int32
		for _, p := range pods {
			if !active(p) {
				continue
			}
			if i, ok := u.index[p.Spec.NodeName]; ok {
				r.Free[i] = add(r.Free[i], scaler.PodResources(&p.Spec))
			}
			if unschedulable(p) {
				pending++
			}
		}
		r.Pending = append(r.Pending, pending)
		var eligible []int
		for i, n := range u.nodes {
			if fits(&d.Spec.Template.Spec, n) {
				eligible = append(eligible, i)
			}
		}
		r.Eligible = append(r.Eligible, eligible)
	}
	return r, nil
}

func add(a, b scaler.Resources) scaler.Resources {
	return scaler.Resources{MilliCPU: a.MilliCPU + b.MilliCPU, Memory: a.Memory + b.Memory, Pods: a.Pods + b.Pods}
}

func sub(a, b scaler.Resources) scaler.Resources {
	return scaler.Resources{MilliCPU: a.MilliCPU - b.MilliCPU, Memory: a.Memory - b.Memory, Pods: a.Pods - b.Pods}
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func active(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func unschedulable(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

// fits reports whether a pod of spec may land on n: its nodeSelector, its
// required node affinity on labels, and the node's NoSchedule and NoExecute
// taints against its tolerations.
func fits(spec *corev1.PodSpec, n *corev1.Node) bool {
	if !labels.SelectorFromSet(spec.NodeSelector).Matches(labels.Set(n.Labels)) {
		return false
	}
	if a := spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		if !matchesAnyTerm(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms, n) {
			return false
		}
	}
	for i := range n.Spec.Taints {
		t := &n.Spec.Taints[i]
		if t.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		tolerated := false
		for j := range spec.Tolerations {
			if spec.Tolerations[j].ToleratesTaint(klog.Background(), t, false) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			return false
		}
	}
	return true
}

var operators = map[corev1.NodeSelectorOperator]selection.Operator{
	corev1.NodeSelectorOpIn: selection.In, corev1.NodeSelectorOpNotIn: selection.NotIn,
	corev1.NodeSelectorOpExists: selection.Exists, corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
	corev1.NodeSelectorOpGt: selection.GreaterThan, corev1.NodeSelectorOpLt: selection.LessThan,
}

// matchesAnyTerm applies required node affinity: terms are ORed, the
// expressions of a term ANDed. Field selectors (metadata.name) are honoured
// for the node name; an invalid term matches nothing, as in the scheduler.
func matchesAnyTerm(terms []corev1.NodeSelectorTerm, n *corev1.Node) bool {
	for _, t := range terms {
		if len(t.MatchExpressions) == 0 && len(t.MatchFields) == 0 {
			continue
		}
		ok := true
		sel := labels.NewSelector()
		for _, e := range t.MatchExpressions {
			req, err := labels.NewRequirement(e.Key, operators[e.Operator], e.Values)
			if err != nil {
				ok = false
				break
			}
			sel = sel.Add(*req)
		}
		for _, f := range t.MatchFields {
			if f.Key != "metadata.name" {
				ok = false
				continue
			}
			req, err := labels.NewRequirement("name", operators[f.Operator], f.Values)
			if err != nil || !labels.NewSelector().Add(*req).Matches(labels.Set{"name": n.Name}) {
				ok = false
			}
		}
		if ok && sel.Matches(labels.Set(n.Labels)) {
			return true
		}
	}
	return false
}
