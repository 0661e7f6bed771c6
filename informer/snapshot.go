package informer

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Snapshot returns every group's members as plain values, each sorted by
// name. It is shared until something of a group changes (a member, an
// autoscaler targeting one, a PriorityClass): callers must not change it.
// Only the groups that changed since the last call are built again, and a
// member's annotations are parsed again only when they changed.
func (inf *Informers) Snapshot() snapshot.Snapshot {
	inf.groupsMu.Lock()
	defer inf.groupsMu.Unlock()
	if inf.snap != nil && len(inf.dirty) == 0 && !inf.allDirty {
		return inf.snap
	}
	prev := inf.snap
	next := maps.Clone(prev)
	dirty := inf.dirty
	if next == nil || inf.allDirty {
		if next == nil {
			next = snapshot.Snapshot{}
		}
		for k := range next {
			dirty[k] = true
		}
		for _, k := range inf.deployments.GetIndexer().ListIndexFuncValues(groupIndex) {
			dirty[k] = true
		}
	}
	for k := range dirty {
		objs, err := inf.deployments.GetIndexer().ByIndex(groupIndex, k)
		if err != nil || len(objs) == 0 { // err: no such index, which New adds
			delete(next, k)
			continue
		}
		ds := make([]*appsv1.Deployment, len(objs))
		for i, o := range objs {
			ds[i] = o.(*appsv1.Deployment)
		}
		slices.SortFunc(ds, func(a, b *appsv1.Deployment) int { return strings.Compare(a.Name, b.Name) })
		next[k] = inf.group(ds, prev[k].Members)
	}
	inf.snap, inf.dirty, inf.allDirty = next, map[string]bool{}, false
	return next
}

// group makes a group of ds, keeping the parse of each member of prev
// (sorted by name) whose annotations are unchanged.
func (inf *Informers) group(ds []*appsv1.Deployment, prev []snapshot.Member) snapshot.Group {
	ms := make([]snapshot.Member, len(ds))
	for i, d := range ds {
		var was *snapshot.Member
		if j, ok := slices.BinarySearchFunc(prev, d.Name, func(m snapshot.Member, name string) int { return strings.Compare(m.Name, name) }); ok {
			was = &prev[j]
		}
		ms[i] = inf.member(d, was)
	}
	return snapshot.Group{Members: ms, Room: func() (policy.Room, error) { return inf.Room(ds) }}
}

// member is d as a snapshot member; was is its member in the last
// snapshot, if it had one.
func (inf *Informers) member(d *appsv1.Deployment, was *snapshot.Member) snapshot.Member {
	m := snapshot.Member{Object: object(d), Autoscalers: inf.Autoscalers(d.Namespace, d.Name)}
	if was != nil && was.UID == d.UID && annotations.SameManaged(was.Annotations, d.Annotations) {
		m.Spec, m.Problem, m.Parsed = was.Spec, was.Problem, was.Parsed
	} else {
		m.Spec, m.Problem = inf.parse(d)
		m.Parsed = inf.parses.Add(1)
	}
	if m.Spec != nil && m.Spec.Rule == annotations.RuleRemainder {
		m.Priority, m.PriorityClass, m.PriorityErr = inf.podPriority(d)
	}
	return m
}

// parse reads d's annotations, its queue-secret qualified with its own
// namespace (a member reads with its namespace's Secret, never another's).
func (inf *Informers) parse(d *appsv1.Deployment) (*annotations.Spec, error) {
	spec, err := annotations.Parse(d.Name, d.Annotations)
	spec.QualifySecret(d.Namespace)
	if err == nil && inf.QueuesInNamespace {
		err = annotations.QueuesInNamespace(spec, d.Namespace)
	}
	if err != nil {
		return nil, err
	}
	return &spec, nil
}

// object is what a snapshot keeps of d.
func object(d *appsv1.Deployment) snapshot.Object {
	o := snapshot.Object{
		Namespace: d.Namespace, Name: d.Name, UID: d.UID, Version: d.ResourceVersion, Generation: d.Generation,
		Replicas: annotations.Replicas(d.Spec.Replicas), Ready: d.Status.ReadyReplicas, Annotations: d.Annotations,
	}
	for _, c := range d.Status.Conditions {
		if annotations.Ours(string(c.Type)) {
			o.Condition = &snapshot.Condition{Status: string(c.Status), Reason: c.Reason, Message: c.Message,
				Since: c.LastTransitionTime.Time, Updated: c.LastUpdateTime.Time}
		}
	}
	return o
}

// Object returns a Deployment of the cache, managed or not, as a snapshot
// keeps it.
func (inf *Informers) Object(namespace, name string) (snapshot.Object, bool) {
	d, err := inf.Deployments.Deployments(namespace).Get(name)
	if err != nil {
		return snapshot.Object{}, false
	}
	return object(d), true
}

// markTarget marks the group of the Deployment an autoscaler targets as
// changed: its members' Autoscalers are looked up again.
func (inf *Informers) markTarget(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	targets, _ := hpaTarget(obj) // never an error
	for _, t := range targets {
		ns, name, _ := strings.Cut(t, "/")
		if d, err := inf.Deployments.Deployments(ns).Get(name); err == nil {
			inf.markDirty(d)
		}
	}
}

// podPriority is the priority the pods of d run at, as the Priority
// admission plugin sets it: its template's PriorityClass, else the
// cluster's global default, else 0; class names the PriorityClass ("" for
// none). A PriorityClass named but not found is an error.
func (inf *Informers) podPriority(d *appsv1.Deployment) (value int32, class string, err error) {
	if name := d.Spec.Template.Spec.PriorityClassName; name != "" {
		pc, err := inf.PriorityClasses.Get(name)
		if err != nil {
			return 0, name, fmt.Errorf("PriorityClass %s: %w", name, err)
		}
		return pc.Value, name, nil
	}
	pcs, err := inf.PriorityClasses.List(k8slabels.Everything())
	if err != nil {
		return 0, "", err
	}
	for _, pc := range pcs {
		if pc.GlobalDefault {
			return pc.Value, pc.Name, nil
		}
	}
	return 0, "", nil
}
