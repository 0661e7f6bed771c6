// Package snapshot holds the plain values the cluster adapter (package
// informer) hands the loop on each tick: the managed Deployments of every
// group, as the caches showed them, with their annotations already parsed.
// Nothing in it points into an informer's cache, and nothing in it talks to
// a server (but a group's Room, which the adapter computes when asked).
package snapshot

import (
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Object is a Deployment as one snapshot saw it: what a write of its
// /scale, an Event on it and its condition need.
type Object struct {
	Namespace, Name string
	UID             types.UID
	// Version is its resourceVersion: it changes with any change of it.
	Version    string
	Generation int64
	// Replicas is spec.replicas (absent: 1, annotations.Replicas).
	Replicas int32
	// Ready is status.readyReplicas.
	Ready int32
	// Annotations are its microscaling.com/ annotations only. Shared with
	// every snapshot that sees the same version: read only.
	Annotations map[string]string
	// Condition is microscaling's condition as the object carries it; nil
	// when it carries none.
	Condition *Condition
}

// Condition is microscaling's condition on a Deployment.
type Condition struct {
	Status, Reason, Message string
	// Since is its lastTransitionTime, Updated its lastUpdateTime.
	Since, Updated time.Time
}

// Member is a managed Deployment on one tick.
type Member struct {
	Object
	// Spec is its parsed annotations; nil when Problem says why they are
	// not valid. Shared between snapshots: never changed.
	Spec    *annotations.Spec
	Problem error
	// Parsed changes each time its annotations are parsed again, and only
	// then: a status or template change keeps it.
	Parsed uint64
	// Priority is the pod priority its pods run at, with the PriorityClass
	// that sets it ("" for none), as the Priority admission plugin sets it;
	// PriorityErr says why it is unknown. Only remainders are looked up.
	Priority      int32
	PriorityClass string
	PriorityErr   error
	// Autoscalers names the HorizontalPodAutoscalers (KEDA's among them)
	// that target it, sorted.
	Autoscalers []string
}

// Group is a group's members, sorted by name, and its room.
type Group struct {
	Members []Member
	// Room computes the node room its members share, from the caches when
	// it is called (at most once a tick is the loop's use); the adapter
	// keeps it while nodes, pods and the members are unchanged.
	Room func() (policy.Room, error)
}

// Snapshot is every group by key (annotations.GroupKey). It is shared
// until a group changes: read only.
type Snapshot map[string]Group
