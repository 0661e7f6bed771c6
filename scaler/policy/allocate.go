package policy

import (
	"cmp"
	"fmt"
	"slices"
)

// Member is one Deployment of a group, as the allocation sees it.
type Member struct {
	Name      string
	Priority  int32
	Remainder bool
	// Want is what the queue rule decided; remainders want Max.
	Want     int32
	Current  int32
	Min, Max int32
	// Pending counts pods that cannot be scheduled now.
	Pending int32
	Pod     Resources
	// Nodes are the indexes of the group's Nodes this member's pods may land
	// on (selectors, affinity, taints); nil means every node.
	Nodes []int
}

// Group is the input of one allocation.
type Group struct {
	Members []Member
	// Free is each schedulable node's allocatable minus the requests of pods
	// that are not in this group.
	Free []Resources
	// RoomKnown is false while the node room cannot be verified: remainders hold.
	RoomKnown bool
	// Budget is group-max-replicas; 0 means none.
	Budget int32
}

// Allocate shares the group's room by priority and returns the replicas of
// each member, in the order of g.Members. Every member gets its Min first.
// Queue members then grow towards Want in priority order (equal priorities
// take turns); a queue member is not held back by node room, so its Pending
// pods can ask a cluster autoscaler for nodes, but once one does not fit, no
// lower priority grows. Remainders come last and take only room that is
// verified free, up to Max. The group's own pods do not count against its
// room, so room held by a remainder is handed to a consumer in one decision.
func Allocate(g Group) []Decision {
	out := make([]Decision, len(g.Members))
	got := make([]int32, len(g.Members))
	free := slices.Clone(g.Free)
	total := int32(0)

	place := func(i int) bool {
		if !g.RoomKnown {
			return true // nothing to pack against; remainders are held instead
		}
		m := &g.Members[i]
		if m.Nodes == nil {
			for n := range free {
				if free[n].fits(m.Pod) {
					free[n].take(m.Pod)
					return true
				}
			}
			return false
		}
		for _, n := range m.Nodes {
			if n >= 0 && n < len(free) && free[n].fits(m.Pod) {
				free[n].take(m.Pod)
				return true
			}
		}
		return false
	}

	order := make([]int, len(g.Members))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ma, mb := &g.Members[a], &g.Members[b]
		if ma.Remainder != mb.Remainder {
			if ma.Remainder {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(ma.Priority, mb.Priority), cmp.Compare(ma.Name, mb.Name))
	})

	lv := levels(g.Members, order)
	// overflow is the first level where a pod did not fit; levels after it
	// do not grow.
	overflow := len(lv)
	// Minimums are owed to every member.
	for k, level := range lv {
		for _, i := range level {
			for got[i] < g.Members[i].Min {
				if !place(i) {
					overflow = min(overflow, k)
				}
				got[i]++
				total++
			}
		}
	}
	budgetLeft := func() bool { return g.Budget == 0 || total < g.Budget }

	// grow hands out one replica at a time, round robin among the members of
	// level k, while limit(i) allows and room and budget remain.
	grow := func(k int, limit func(int) int32, mustFit bool) {
		for {
			progressed := false
			for _, i := range lv[k] {
				if got[i] >= limit(i) || !budgetLeft() {
					continue
				}
				if !place(i) {
					if mustFit {
						continue
					}
					overflow = min(overflow, k)
				}
				got[i]++
				total++
				progressed = true
			}
			if !progressed {
				return
			}
		}
	}
	for k, level := range lv {
		if k > overflow {
			break // a higher priority has pods without room: lower ones stay at min
		}
		if g.Members[level[0]].Remainder {
			grow(k, func(i int) int32 { return remainderLimit(&g.Members[i], g.RoomKnown) }, true)
		} else {
			grow(k, func(i int) int32 { return min(g.Members[i].Want, g.Members[i].Max) }, false)
		}
	}

	for i := range g.Members {
		m := &g.Members[i]
		why, held := allocReason(m, got[i], g, total)
		out[i] = Decision{Replicas: got[i], Reason: why, Held: held}
	}
	return out
}

// remainderLimit is the most a remainder may have: Max, but no growth into
// unverified room, and fewer when some of its pods are already Pending.
func remainderLimit(m *Member, capacityKnown bool) int32 {
	limit := m.Max
	if !capacityKnown {
		limit = min(limit, m.Current)
	}
	if m.Pending > 0 {
		limit = min(limit, m.Current-m.Pending)
	}
	return max(limit, m.Min)
}

// levels splits order into runs of equal (Remainder, Priority).
func levels(ms []Member, order []int) [][]int {
	var out [][]int
	for k, i := range order {
		if k == 0 || ms[i].Priority != ms[order[k-1]].Priority || ms[i].Remainder != ms[order[k-1]].Remainder {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], i)
	}
	return out
}

// allocReason says why a member got less than it wanted, and what held it
// (HeldBudget or HeldRoom).
func allocReason(m *Member, got int32, g Group, total int32) (string, string) {
	want := min(m.Want, m.Max)
	if m.Remainder {
		want = m.Max
	}
	held := HeldRoom
	if g.Budget > 0 && total >= g.Budget {
		held = HeldBudget
	}
	switch {
	case got >= want:
		return "", ""
	case got <= m.Min && m.Min > 0:
		return fmt.Sprintf("held at min %d: room taken by higher priorities", m.Min), held
	case m.Remainder && !g.RoomKnown:
		return "spare room unverified: not growing", HeldRoom
	case m.Remainder && m.Pending > 0:
		return fmt.Sprintf("%d pods pending: giving their room back", m.Pending), HeldRoom
	case m.Remainder && got > m.Current:
		return fmt.Sprintf("spare room for %d of max %d", got, want), held
	case held == HeldBudget:
		return fmt.Sprintf("cut to %d of %d wanted: group room (budget %d) taken by higher priorities", got, want, g.Budget), held
	default:
		return fmt.Sprintf("cut to %d of %d wanted: node room taken by higher priorities", got, want), held
	}
}
