package informer

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corehelpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/scaler/policy"
)

// usage is the cluster's schedulable nodes and what all pods request on
// each, at one generation of the node, pod and RuntimeClass caches; every
// group's room starts from it.
type usage struct {
	generation uint64
	nodes      []*corev1.Node
	free       []policy.Resources // allocatable minus every pod's requests
	index      map[string]int     // node name -> index
}

// roomEntry is a room computed for a group, remembered by its first
// member's UID with the members it was computed for.
type roomEntry struct {
	members []memberVersion
	room    policy.Room
}

type memberVersion struct {
	uid types.UID
	rv  string
}

// same reports whether the entry was computed for these members at these
// resourceVersions.
func (e *roomEntry) same(members []*appsv1.Deployment) bool {
	if len(e.members) != len(members) {
		return false
	}
	for i, d := range members {
		if e.members[i].uid != d.UID || e.members[i].rv != d.ResourceVersion {
			return false
		}
	}
	return true
}

// Room returns the room a group's members share: each schedulable node's
// allocatable minus the requests of pods that are not the members' own,
// the nodes each member's pods may land on, each member's Pending pods and
// what one of its pods requests as admitted. Its Version is the generation
// of the node, pod and RuntimeClass caches; while they and the members are
// unchanged, the room is not computed again.
func (inf *Informers) Room(members []*appsv1.Deployment) (policy.Room, error) {
	u, err := inf.usage()
	if err != nil {
		return policy.Room{}, err
	}
	if len(members) == 0 {
		return policy.Room{Version: u.generation}, nil
	}
	inf.roomsMu.RLock()
	e, ok := inf.rooms[members[0].UID]
	inf.roomsMu.RUnlock()
	if ok && e.room.Version == u.generation && e.same(members) {
		return e.room, nil // shared: callers only read it
	}
	r, err := inf.room(u, members)
	if err != nil {
		return r, err
	}
	key := make([]memberVersion, len(members))
	for i, d := range members {
		key[i] = memberVersion{d.UID, d.ResourceVersion}
	}
	inf.roomsMu.Lock()
	if inf.roomsGen != u.generation {
		clear(inf.rooms) // rooms of an older generation are never used again
		inf.roomsGen = u.generation
	}
	inf.rooms[members[0].UID] = roomEntry{members: key, room: r}
	inf.roomsMu.Unlock()
	return r, nil
}

// usage reads nodes and pods from the caches, once per generation; while
// the generation stands, every group of every worker gets it without a lock.
func (inf *Informers) usage() (*usage, error) {
	gen := inf.generation.Load()
	if u := inf.last.Load(); u != nil && u.generation == gen {
		return u, nil
	}
	inf.usageMu.Lock()
	defer inf.usageMu.Unlock()
	if u := inf.last.Load(); u != nil && u.generation == gen {
		return u, nil
	}
	nodes, err := inf.Nodes.List(k8slabels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	// In name order: the same cluster packs the same way every time.
	slices.SortFunc(nodes, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	u := &usage{generation: gen, index: map[string]int{}}
	for _, n := range nodes {
		if n.Spec.Unschedulable || !ready(n) {
			continue
		}
		u.index[n.Name] = len(u.nodes)
		u.nodes = append(u.nodes, n)
		a := n.Status.Allocatable
		u.free = append(u.free, policy.Resources{MilliCPU: a.Cpu().MilliValue(), Memory: a.Memory().Value(), Pods: a.Pods().Value()})
	}
	pods, err := inf.Pods.List(k8slabels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for _, p := range pods {
		if i, ok := u.index[p.Spec.NodeName]; ok && active(p) {
			u.free[i] = u.free[i].Sub(podRequests(&p.Spec))
		}
	}
	inf.last.Store(u)
	return u, nil
}

func (inf *Informers) room(u *usage, members []*appsv1.Deployment) (policy.Room, error) {
	r := policy.Room{Version: u.generation, Free: slices.Clone(u.free)}
	for _, d := range members {
		sel, err := inf.selector(d)
		if err != nil {
			return r, err
		}
		pods, err := inf.Pods.Pods(d.Namespace).List(sel)
		if err != nil {
			return r, fmt.Errorf("listing pods of %s/%s: %w", d.Namespace, d.Name, err)
		}
		var pending int32
		for _, p := range pods {
			if !active(p) {
				continue
			}
			if i, ok := u.index[p.Spec.NodeName]; ok {
				r.Free[i] = r.Free[i].Add(podRequests(&p.Spec))
			}
			if unschedulable(p) {
				pending++
			}
		}
		r.Pending = append(r.Pending, pending)
		spec := &d.Spec.Template.Spec
		var eligible []int
		for i, n := range u.nodes {
			if fits(spec, n) {
				eligible = append(eligible, i)
			}
		}
		r.Eligible = append(r.Eligible, eligible)
		pod, err := inf.admitted(spec)
		if err != nil {
			return r, fmt.Errorf("pods of %s/%s: %w", d.Namespace, d.Name, err)
		}
		r.Pods = append(r.Pods, pod)
	}
	return r, nil
}

// admitted is what one pod of a template requests once admitted: with the
// overhead of its RuntimeClass, which admission adds to the pod.
func (inf *Informers) admitted(spec *corev1.PodSpec) (policy.Resources, error) {
	if spec.RuntimeClassName == nil || *spec.RuntimeClassName == "" || spec.Overhead != nil {
		return podRequests(spec), nil
	}
	rc, err := inf.RuntimeClasses.Get(*spec.RuntimeClassName)
	if err != nil {
		return policy.Resources{}, fmt.Errorf("RuntimeClass %q: %w", *spec.RuntimeClassName, err)
	}
	if rc.Overhead == nil {
		return podRequests(spec), nil
	}
	s := *spec
	s.Overhead = rc.Overhead.PodFixed
	return podRequests(&s), nil
}

// selector compiles a Deployment's selector once per resourceVersion.
func (inf *Informers) selector(d *appsv1.Deployment) (k8slabels.Selector, error) {
	type cached struct {
		rv  string
		sel k8slabels.Selector
	}
	if v, ok := inf.selectors.Load(d.UID); ok && v.(cached).rv == d.ResourceVersion {
		return v.(cached).sel, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("deployment %s/%s selector: %w", d.Namespace, d.Name, err)
	}
	inf.selectors.Store(d.UID, cached{d.ResourceVersion, sel})
	return sel, nil
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

// fits reports whether a pod of spec may land on n as the scheduler judges
// it: its nodeSelector and required node affinity, and the node's
// NoSchedule and NoExecute taints against its tolerations.
func fits(spec *corev1.PodSpec, n *corev1.Node) bool {
	if ok, err := nodeaffinity.NewRequiredNodeAffinity(spec.NodeSelector, spec.Affinity).Match(n); err != nil || !ok {
		return false // an invalid term matches nothing, as in the scheduler
	}
	_, untolerated := corehelpers.FindMatchingUntoleratedTaint(klog.Background(), n.Spec.Taints, spec.Tolerations, func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	}, false)
	return !untolerated
}

// roomCache holds the rooms computed at one generation.
type roomCache struct {
	roomsMu  sync.RWMutex // guards rooms and roomsGen
	rooms    map[types.UID]roomEntry
	roomsGen uint64
}
