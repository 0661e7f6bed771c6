// Package policy is the controller's pure decision: what one pod requests
// (as the scheduler counts it), arrival and service rates from queue
// counters, the queue rule, the allocation of a group's room by priority, and
// DecideGroup, which ties them together for one group. It takes plain values
// and a time, returns plain values, and imports no client.
package policy

import (
	"slices"
	"strings"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

// QueueReading is one read of a member's queues, summed over all of them.
// A source fills what its server counts, and says what it cannot give.
type QueueReading struct {
	Backlog int64 // waiting + in flight + deferred
	// Waiting is the part of the backlog not yet delivered to any consumer;
	// a source that cannot tell them apart gives the whole backlog.
	Waiting int64
	Arrived int64 // cumulative arrivals (valid unless NoArrivals)
	// NoArrivals: some queue counts no arrivals (a Redis list, a
	// Prometheus queue without an arrivals query). No rate can be learnt:
	// the rule sizes from the backlog alone.
	NoArrivals bool
	// Consumers is the largest count of connected consumers on any of the
	// queues; 0 when none is seen or the server does not list them (the
	// Ready replicas stand for them).
	Consumers int64
	// At is when the counts were read (the latest answer); zero: the tick's
	// time stands for it.
	At time.Time
	// Completed is the cumulative count of messages consumers finished
	// (acknowledged), valid when CompletedKnown: a server that counts them
	// apart from its queue figures (RabbitMQ's acks) gives the service rate
	// directly, where arrivals less the backlog's change would mix figures
	// it took at different instants.
	Completed      int64
	CompletedKnown bool
	// Earliest is how old the counts may be: a server that refreshes its
	// figures on its own schedule changed them some time after the read
	// before the one that first showed them (Earliest) and before At. Zero:
	// they were taken at At.
	Earliest time.Time
}

// Plus is the reading of two queues (or two servers of one queue) taken
// together: counts add, the queue without arrivals makes the sum have none,
// the consumers are the most seen on either (a consumer reads them all),
// and the latest answer dates it.
func (r QueueReading) Plus(o QueueReading) QueueReading {
	if r == (QueueReading{}) {
		return o // the sum of none: what the server counts is o's to say
	}
	r.Backlog += o.Backlog
	r.Waiting += o.Waiting
	r.Arrived += o.Arrived
	r.NoArrivals = r.NoArrivals || o.NoArrivals
	r.Completed += o.Completed
	r.CompletedKnown = r.CompletedKnown && o.CompletedKnown
	r.Consumers = max(r.Consumers, o.Consumers)
	if r.Earliest.IsZero() || !o.Earliest.IsZero() && o.Earliest.Before(r.Earliest) {
		// Figures that lag their reads make the sum lag as much; live ones
		// (read when asked) keep it exact.
		r.Earliest = o.Earliest
	}
	if o.At.After(r.At) {
		r.At = o.At
	}
	return r
}

// Readings answers for each queue from one tick's reads.
type Readings interface {
	Reading(q annotations.QueueRef) (QueueReading, error)
}

// Room is the node room a group's members share, as the cluster adapter
// sees it at one moment.
type Room struct {
	// Version names what the room was computed from: the same Version and
	// the same members' versions give the same room.
	Version uint64
	// Free is each schedulable node's allocatable minus the requests of pods
	// that are not the group's.
	Free []Resources
	// Eligible holds, per member, the indexes into Free its pods may land on.
	Eligible [][]int
	// Pending counts, per member, pods that cannot be scheduled now.
	Pending []int32
	// Pods holds, per member, what one pod of its template requests.
	Pods []Resources
}

// MemberState is what the decision remembers of one member between
// decisions; the caller keeps one per Deployment and hands it back.
type MemberState struct {
	Rates Rates
	Queue QueueState
	guard behindGuard
	tput  throughputs
	start startup
}

// Startup is how long the member's new replicas took to start consuming
// (the median of the last few scale-ups); 0 before any was measured.
func (s *MemberState) Startup() time.Duration { return s.start.learned() }

// Step observes one read of the member's queues (known false: the read
// failed) and applies the queue rule. ready is how many replicas are Ready.
//
// The replicas consuming are those the queue sees connected, up to the
// replicas there are (asked for, or Ready while a scale-down lets them
// finish): Kubernetes' Ready is not the queue's, and a pod whose readiness
// probe fails under load, or has not passed its initial delay, consumes
// all the same. Counting only the Ready ones would divide several
// replicas' throughput among fewer and take the group's rate for one
// replica's, and the rule would stop growing with the load. With no
// connection seen at all (consumers the queue does not list, or none
// alive) the Ready replicas count: they are not on the way.
func (s *MemberState) Step(p QueuePolicy, now time.Time, cur, ready int32, r QueueReading, known bool) Decision {
	in := QueueInput{Now: now, Current: cur}
	if known && r.NoArrivals {
		// Nothing to learn a rate from: the backlog alone sizes.
		consuming := ready
		if r.Consumers > 0 {
			consuming = int32(min(r.Consumers, int64(max(ready, cur))))
		}
		in.BacklogKnown, in.BacklogOnly, in.Backlog, in.Waiting, in.Consuming = true, true, r.Backlog, r.Waiting, consuming
		s.Rates = Rates{}
		return DecideQueue(p, in, &s.Queue)
	}
	if known {
		consuming := ready
		if r.Consumers > 0 {
			consuming = int32(min(r.Consumers, int64(max(ready, cur))))
		}
		at, earliest := now, time.Time{}
		if !r.At.IsZero() {
			at, earliest = r.At, r.Earliest
		}
		sample := QueueSample{Time: at, Earliest: earliest, Backlog: r.Backlog, Waiting: r.Waiting, Arrived: r.Arrived,
			Completed: r.Completed, CompletedKnown: r.CompletedKnown, Consuming: consuming}
		if s.Rates.started {
			s.tput.observe(s.Rates.last, sample, s.Rates.Service, s.Rates.ServiceKnown)
		}
		s.Rates.Observe(sample)
		s.start.observe(now, cur, consuming)
		in.Startup, in.OnWay = s.start.expected(now), s.start.onWay(now)
		in.Saturation = s.tput.verdict(now)
		in.BacklogKnown, in.Backlog, in.Waiting, in.Arrived, in.Consuming, in.Rates = true, r.Backlog, r.Waiting, r.Arrived, consuming, s.Rates
		// The guard does not trust the estimator: a backlog that runs away
		// from its target while the replicas stay put corrects the rate to
		// what they deliver.
		above, _ := p.bands(in)
		estimate := 0.0
		if s.Rates.ServiceKnown {
			estimate = s.Rates.Service
		}
		if c, ok := s.guard.observe(sample, cur, above, estimate); ok {
			s.Rates.Service, s.Rates.ServiceKnown = c.Delivered, true
		}
		in.Rates = s.Rates
		in.Rates.Service = s.guard.limit(s.Rates.Service)
	}
	d := DecideQueue(p, in, &s.Queue)
	if s.guard.fixed {
		d.Corrected = s.guard.fix
	}
	return d
}

// PolicyOf is the queue rule's settings from a member's annotations.
func PolicyOf(s *annotations.Spec) QueuePolicy {
	return QueuePolicy{Target: s.TargetQueueLength, Wait: s.TargetWait, Min: s.MinReplicas, Max: s.MaxReplicas, MaxDelta: s.MaxDelta, ScaleDownDelay: s.ScaleDownDelay,
		FallbackReplicas: s.FallbackReplicas, FallbackAfter: s.FallbackAfter, ScaleUpLimit: s.ScaleUpLimit, ScaleDownLimit: s.ScaleDownLimit}
}

// MemberInput is one managed Deployment with a valid spec, as a group
// decision takes it.
type MemberInput struct {
	Name string
	// Version is the Deployment's resourceVersion: its spec, replicas and
	// pod template.
	Version string
	Spec    *annotations.Spec
	// Current is the replicas asked for now; Ready those Ready.
	Current, Ready int32
	// Queue is the read of its queues when QueueKnown (queue members only).
	Queue      QueueReading
	QueueKnown bool
	// State is the member's memory, as the last decision returned it
	// (GroupOutput.States); the zero value for a new member.
	State MemberState
	// NoGrowth keeps the member at or below Current (a remainder whose pods
	// would run at too high a priority).
	NoGrowth bool
}

// GroupInput is everything one group decision reads.
type GroupInput struct {
	Now     time.Time
	Members []MemberInput
	// Room is the group's node room; nil while it is unknown. It is read
	// only when NeedsRoom says so.
	Room *Room
	// Scratch, when set, lends the decision its slices, the output's
	// Decisions among them: valid until Scratch is lent again. A loop
	// deciding thousands of groups a second then allocates nothing for
	// most of them.
	Scratch *Scratch
}

// Scratch is memory a group decision reuses; see GroupInput.Scratch.
type Scratch struct {
	decisions []Decision
	states    []MemberState
	members   []Member
	specs     []*annotations.Spec
	said      []said
}

// said is what a member's queue rule (or pause) said: why, and what holds
// it.
type said struct {
	why, held string
	fix       Correction
	fallback  bool
	sat       Saturation
}

// lend is a slice of n zero values, reusing buf's array when it is large
// enough.
func lend[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	s := (*buf)[:n]
	clear(s)
	return s
}

// GroupOutput is a group decision.
type GroupOutput struct {
	// Decisions are in the order of GroupInput.Members.
	Decisions []Decision
	// States are each member's next memory, in the same order: the caller
	// keeps them and hands them back on the next decision.
	States []MemberState
	// Writes are the indexes of the members whose replicas change, in the
	// order to write them: decreases first, so room is given back before it
	// is taken. Paused members are never among them.
	Writes []int
	// Budget is the group-max-replicas in force (the smallest any member
	// sets); 0: none. BudgetConflict is set when members disagree on it.
	Budget         int32
	BudgetConflict bool
	// RoomUnknown is set when the group needed room that was not known:
	// remainders held.
	RoomUnknown bool
	// Unchanged is set when the members, their queue rules and the room are
	// as at the last decision, which changed nothing: nothing changes now.
	Unchanged bool
}

// GroupState is what the decision remembers of one group; the zero value
// for a new group.
type GroupState struct {
	// quiet: the last decision changed nothing. While the members, the room
	// and what each queue rule wants stay as they were, the allocation would
	// give the same again, so it is skipped.
	quiet       bool
	inputs      []allocInput
	roomVersion uint64
}

// Quiet reports whether the last decision changed nothing, so that the
// next may skip the allocation while its inputs stay the same.
func (gs GroupState) Quiet() bool { return gs.quiet }

// allocInput is what one member brought to an allocation.
type allocInput struct {
	name    string
	version string
	want    int32
	held    string // what the allocation held it by then, and holds it by while nothing changes
}

// NeedsRoom reports whether a group of these members shares node room: a
// lone queue member is never held back by node room (no nodes to pack, and
// its pods beyond them may ask a cluster autoscaler for more).
func NeedsRoom(specs ...*annotations.Spec) bool {
	return len(specs) > 1 || (len(specs) == 1 && specs[0].Rule == annotations.RuleRemainder)
}

// DecideGroup decides one group: the queue rule of every queue member, then
// the allocation of the group's room by priority. Paused members keep their
// replicas and are never written. It takes the group's state and each
// member's (in.Members[i].State) as values and returns the next ones; the
// caller keeps those and drops what it handed in, whose memory the next
// states may reuse (a member's window of throughputs is not copied each
// tick). Given the same states and input it returns the same answer.
func DecideGroup(in GroupInput, gs GroupState) (GroupState, GroupOutput) {
	ms := in.Members
	sc := in.Scratch
	if sc == nil {
		sc = &Scratch{}
	}
	out := GroupOutput{Decisions: lend(&sc.decisions, len(ms)), States: lend(&sc.states, len(ms))}
	g := Group{Members: lend(&sc.members, len(ms))}
	specs := lend(&sc.specs, len(ms))
	rule := lend(&sc.said, len(ms)) // what each member's queue rule said
	for i, m := range ms {
		s := m.Spec
		specs[i] = s
		a := Member{Name: m.Name, Priority: s.Priority, Remainder: s.Rule == annotations.RuleRemainder,
			Current: m.Current, Min: s.MinReplicas, Max: s.MaxReplicas, Want: m.Current}
		out.States[i] = m.State
		switch {
		case s.Paused:
			a.Min, a.Max = m.Current, m.Current
			rule[i].held = HeldPaused
		case m.NoGrowth:
			a.Max = min(a.Max, m.Current)
			rule[i].held = HeldPriority
		case s.Rule == annotations.RuleQueue:
			d := out.States[i].Step(PolicyOf(s), in.Now, m.Current, m.Ready, m.Queue, m.QueueKnown)
			a.Want, rule[i] = d.Replicas, said{d.Reason, d.Held, d.Corrected, d.Fallback, d.Saturated}
		}
		if b := s.GroupMaxReplicas; b > 0 {
			if out.Budget > 0 && out.Budget != b {
				out.BudgetConflict = true
			}
			if out.Budget == 0 || b < out.Budget {
				out.Budget = b
			}
		}
		g.Members[i] = a
	}
	if len(ms) == 0 {
		return gs, out
	}
	g.Budget = out.Budget
	needed := NeedsRoom(specs...)
	var roomVersion uint64
	if needed && in.Room != nil {
		roomVersion = in.Room.Version
	}
	if !(needed && in.Room == nil) && gs.unchanged(ms, g.Members, roomVersion) {
		for i, m := range ms {
			out.Decisions[i] = Decision{Replicas: m.Current, Held: heldBy(rule[i].held, gs.inputs[i].held), Corrected: rule[i].fix, Fallback: rule[i].fallback, Saturated: rule[i].sat}
		}
		out.Unchanged = true
		return gs, out
	}
	switch {
	case !needed:
		g.RoomKnown = true
	case in.Room != nil:
		r := in.Room
		g.Free, g.RoomKnown = r.Free, true
		for i := range g.Members {
			g.Members[i].Nodes = r.Eligible[i]
			if g.Members[i].Nodes == nil {
				g.Members[i].Nodes = []int{} // no node fits: not "every node"
			}
			g.Members[i].Pending = r.Pending[i]
			g.Members[i].Pod = r.Pods[i]
		}
	default:
		out.RoomUnknown = true
	}
	alloc := Allocate(g)
	for i, d := range alloc {
		why := rule[i].why
		if d.Reason != "" {
			why = strings.TrimPrefix(why+"; "+d.Reason, "; ")
		}
		if g.Members[i].Remainder && why == "" {
			why = "spare room in the group"
		}
		out.Decisions[i] = Decision{Replicas: d.Replicas, Reason: why, Held: heldBy(rule[i].held, d.Held), Corrected: rule[i].fix, Fallback: rule[i].fallback, Saturated: rule[i].sat}
		if d.Replicas != ms[i].Current && !ms[i].Spec.Paused {
			out.Writes = append(out.Writes, i)
		}
	}
	slices.SortStableFunc(out.Writes, func(a, b int) int {
		return int(alloc[a].Replicas-ms[a].Current) - int(alloc[b].Replicas-ms[b].Current)
	})
	if out.RoomUnknown || len(out.Writes) > 0 {
		return GroupState{}, out // decide in full again next time
	}
	next := GroupState{quiet: true, roomVersion: roomVersion, inputs: make([]allocInput, len(ms))}
	for i, m := range ms {
		next.inputs[i] = allocInput{name: m.Name, version: m.Version, want: g.Members[i].Want, held: alloc[i].Held}
	}
	return next, out
}

// heldBy is what holds a member: paused first, then the allocation (room,
// budget), then its queue rule.
func heldBy(rule, alloc string) string {
	if alloc != "" && rule != HeldPaused && rule != HeldPriority {
		return alloc
	}
	return rule
}

// unchanged reports whether a quiet group's members bring what they brought
// to its last allocation, into the same room.
func (gs GroupState) unchanged(ms []MemberInput, alloc []Member, roomVersion uint64) bool {
	if !gs.quiet || len(ms) != len(gs.inputs) || roomVersion != gs.roomVersion {
		return false
	}
	for i := range ms {
		if in := gs.inputs[i]; ms[i].Name != in.name || ms[i].Version != in.version || alloc[i].Want != in.want {
			return false
		}
	}
	return true
}
