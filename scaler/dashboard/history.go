package dashboard

import (
	"slices"
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

	mu      sync.Mutex // guards members and events
	members map[string]*MemberHistory
	events  []EventRecord
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
	Points    []Point `json:"points"`
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

// Record adds a point to m, a member's history from h.Member.
func (h *History) Record(m *MemberHistory, group, rule string, priority int32, p Point) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m.Group, m.Rule, m.Priority = group, rule, priority
	limit := max(10, min(h.Points, h.TotalPoints/max(1, len(h.members))))
	if len(m.Points) >= limit {
		// Shift in place: the slice never grows past limit.
		n := copy(m.Points, m.Points[len(m.Points)-limit+1:])
		m.Points = m.Points[:n]
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
	delete(h.members, ns+"/"+name)
}

// State is what the dashboard shows.
type State struct {
	Members []MemberHistory `json:"members"`
	Events  []EventRecord   `json:"events"`
}

// State copies the history, members sorted by group then priority.
func (h *History) State() State {
	h.mu.Lock()
	defer h.mu.Unlock()
	var st State
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
	return st
}
