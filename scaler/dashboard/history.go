package dashboard

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// History keeps the recent decisions of every member and the recent scale
// events, for the dashboard. It is bounded: Points per member (fewer when
// there are so many members that TotalPoints would be passed), Events in all.
type History struct {
	Points      int // per member
	TotalPoints int // over all members
	Events      int

	mu      sync.Mutex // guards members, events, gen and snap
	members map[string]*MemberHistory
	events  []EventRecord
	gen     uint64 // changes counted; snap is of gen snapGen
	snap    *State
	snapGen uint64
}

// NewHistory keeps points per member and events in all.
func NewHistory(points, events int) *History {
	return &History{Points: points, TotalPoints: 100000, Events: events, members: map[string]*MemberHistory{}}
}

// Point is one decision of one member.
type Point struct {
	T       int64   `json:"t"` // unix milliseconds
	Backlog float64 `json:"backlog"`
	Target  float64 `json:"target"`
	Desired int32   `json:"desired"`
	Current int32   `json:"current"`
}

// MemberHistory is one Deployment's recent decisions.
type MemberHistory struct {
	Group     string  `json:"group"`
	Namespace string  `json:"namespace"`
	Name      string  `json:"name"`
	Rule      string  `json:"rule"`
	Priority  int32   `json:"priority"`
	Status    Status  `json:"status"`
	Points    []Point `json:"points"`
}

// Status is a member as its last decision left it. It holds no pointer, so
// recording it allocates nothing.
type Status struct {
	Replicas int32 `json:"replicas"`
	Desired  int32 `json:"desired"`
	// Backlog is valid when BacklogKnown (its queue was read).
	Backlog      int64  `json:"backlog"`
	BacklogKnown bool   `json:"backlogKnown"`
	Target       int64  `json:"target,omitempty"`
	TargetWait   string `json:"targetWait,omitempty"`
	// Arrival is messages per second; Service, per consuming replica; each
	// valid when its Known flag is set.
	Arrival      float64 `json:"arrival"`
	ArrivalKnown bool    `json:"arrivalKnown"`
	Service      float64 `json:"service"`
	ServiceKnown bool    `json:"serviceKnown"`
	// Startup is how long new replicas took to start consuming (the
	// median of the last few scale-ups; empty before one was measured).
	Startup string `json:"startup,omitempty"`
	// Held names what keeps the member from what its load asks for: max,
	// min, max-delta, delay, unreadable, paused, budget, room, priority,
	// conflict.
	Held string `json:"held,omitempty"`
	// Corrected says, while it lasts, that the service rate is held at what
	// the replicas delivered because the estimate let the backlog run away.
	Corrected string `json:"corrected,omitempty"`
	// Reason is the last change's reason, at ReasonAt (unix milliseconds).
	Reason   string `json:"reason,omitempty"`
	ReasonAt int64  `json:"reasonAt,omitempty"`
}

// EventRecord is one scale, with its reason.
type EventRecord struct {
	T       int64  `json:"t"`
	Group   string `json:"group"`
	Message string `json:"message"`
}

// Member returns the history of one Deployment, made on first use; nil
// when h is nil.
func (h *History) Member(ns, name string) *MemberHistory {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := ns + "/" + name
	m, ok := h.members[key]
	if !ok {
		m = &MemberHistory{Namespace: ns, Name: name}
		h.members[key] = m
	}
	return m
}

// Record adds a point to m, a member's history from h.Member, and sets its
// status; a status without a Reason keeps the last one.
func (h *History) Record(m *MemberHistory, group, rule string, priority int32, p Point, s Status) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	m.Group, m.Rule, m.Priority = group, rule, priority
	if s.Reason == "" {
		s.Reason, s.ReasonAt = m.Status.Reason, m.Status.ReasonAt
	}
	m.Status = s
	limit := max(2, min(h.Points, h.TotalPoints/max(1, len(h.members))))
	if len(m.Points) >= limit {
		keep := m.Points[len(m.Points)-limit+1:]
		if cap(m.Points) > 2*limit {
			// Kept from when there were fewer members: sized again.
			m.Points = append(make([]Point, 0, limit), keep...)
		} else {
			// Shift in place: the slice never grows past limit.
			m.Points = m.Points[:copy(m.Points, keep)]
		}
	}
	if len(m.Points) == cap(m.Points) {
		// Doubling as append would, never past limit.
		m.Points = slices.Grow(m.Points, min(limit, max(4, 2*cap(m.Points)))-len(m.Points))
	}
	m.Points = append(m.Points, p)
}

// Event adds a scale event of group at the given time.
func (h *History) Event(group, msg string, at time.Time) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	h.events = append(h.events, EventRecord{T: at.UnixMilli(), Group: group, Message: msg})
	if len(h.events) > h.Events {
		h.events = slices.Delete(h.events, 0, len(h.events)-h.Events)
	}
}

// Forget drops the history of a Deployment that is no longer managed.
func (h *History) Forget(ns, name string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	delete(h.members, ns+"/"+name)
}

// State is what the dashboard shows.
type State struct {
	Members []MemberHistory `json:"members"`
	Events  []EventRecord   `json:"events"`
}

// State is a copy of the history, members sorted by group then priority.
// It is copied at most once per change (a tick's worth of points is one
// change per member), not per request; callers must not modify it.
func (h *History) State() *State {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.snap != nil && h.snapGen == h.gen {
		return h.snap
	}
	st := &State{}
	for _, m := range h.members {
		c := *m
		c.Points = slices.Clone(m.Points)
		st.Members = append(st.Members, c)
	}
	slices.SortFunc(st.Members, func(a, b MemberHistory) int {
		if a.Namespace+"/"+a.Group != b.Namespace+"/"+b.Group {
			if a.Namespace+"/"+a.Group < b.Namespace+"/"+b.Group {
				return -1
			}
			return 1
		}
		if a.Priority != b.Priority {
			return int(a.Priority - b.Priority)
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	st.Events = slices.Clone(h.events)
	h.snap, h.snapGen = st, h.gen
	return st
}

// Namespaces lists the namespaces st has members in, sorted.
func (st *State) Namespaces() []string {
	var ns []string
	for _, m := range st.Members {
		if len(ns) == 0 || ns[len(ns)-1] != m.Namespace {
			ns = append(ns, m.Namespace)
		}
	}
	slices.Sort(ns)
	return slices.Compact(ns)
}

// Filter returns the part of st in the namespaces keep accepts: their
// members, and the events of their groups.
func (st *State) Filter(keep func(namespace string) bool) *State {
	out := &State{Members: []MemberHistory{}, Events: []EventRecord{}}
	for _, m := range st.Members {
		if keep(m.Namespace) {
			out.Members = append(out.Members, m)
		}
	}
	for _, e := range st.Events {
		if ns, _, _ := strings.Cut(e.Group, "/"); keep(ns) {
			out.Events = append(out.Events, e)
		}
	}
	return out
}
