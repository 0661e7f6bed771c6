package policy

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

// spec parses annotations for a test member; it fails the test on an error.
func spec(t *testing.T, ann ...string) *annotations.Spec {
	t.Helper()
	m := map[string]string{}
	for i := 0; i+1 < len(ann); i += 2 {
		m[annotations.Prefix+ann[i]] = ann[i+1]
	}
	s, err := annotations.Parse("x", m)
	if err != nil {
		t.Fatalf("test spec %v: %v", ann, err)
	}
	return &s
}

// node is free room of cpu millicores and pods.
func node(milli, pods int64) Resources {
	return Resources{MilliCPU: milli, Memory: 1 << 40, Pods: pods}
}

var pod100m = Resources{MilliCPU: 100, Memory: 1 << 20, Pods: 1}

// room is one group's room on the given nodes, every member eligible for
// every node, with pods of 100m and no Pending pods unless given.
func room(version uint64, members int, pending []int32, free ...Resources) *Room {
	r := &Room{Version: version, Free: free}
	all := make([]int, len(free))
	for i := range all {
		all[i] = i
	}
	for i := range members {
		r.Eligible = append(r.Eligible, all)
		r.Pods = append(r.Pods, pod100m)
		p := int32(0)
		if i < len(pending) {
			p = pending[i]
		}
		r.Pending = append(r.Pending, p)
	}
	return r
}

func describe(in GroupInput, out GroupOutput) string {
	var parts []string
	for i, d := range out.Decisions {
		held := ""
		if d.Held != "" {
			held = "(" + d.Held + ")"
		}
		parts = append(parts, fmt.Sprintf("%s=%d%s", in.Members[i].Name, d.Replicas, held))
	}
	var writes []string
	for _, i := range out.Writes {
		writes = append(writes, in.Members[i].Name)
	}
	s := strings.Join(parts, " ") + " writes[" + strings.Join(writes, ",") + "]"
	if out.BudgetConflict {
		s += fmt.Sprintf(" budget-conflict(%d)", out.Budget)
	}
	if out.RoomUnknown {
		s += " room-unknown"
	}
	return s
}

func TestDecideGroup(t *testing.T) {
	consumer := func(cur int32, backlog int64, ann ...string) MemberInput {
		return MemberInput{Name: "consumer", Version: "1", Current: cur, Ready: cur,
			Spec:  spec(t, append([]string{"queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"}, ann...)...),
			Queue: QueueReading{Backlog: backlog, Waiting: backlog, Consumers: int64(cur)}, QueueKnown: true}
	}
	remainder := func(name string, cur int32, ann ...string) MemberInput {
		return MemberInput{Name: name, Version: "1", Current: cur, Ready: cur,
			Spec: spec(t, append([]string{"rule", "remainder", "priority", "2", "max-replicas", "40"}, ann...)...)}
	}
	tests := []struct {
		name string
		in   GroupInput
		want string
	}{
		{
			name: "a remainder fills the room a consumer does not need",
			in:   GroupInput{Members: []MemberInput{consumer(1, 0), remainder("remainder", 0)}, Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=1 remainder=9(room) writes[remainder]",
		},
		{
			name: "a growing consumer takes the remainder's room; the remainder is written first",
			in:   GroupInput{Members: []MemberInput{consumer(1, 400), remainder("remainder", 9)}, Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=5 remainder=5(room) writes[remainder,consumer]",
		},
		{
			name: "a remainder with Pending pods gives them back",
			in:   GroupInput{Members: []MemberInput{consumer(1, 0), remainder("remainder", 12)}, Room: room(1, 2, []int32{0, 3}, node(1000, 110))},
			want: "consumer=1 remainder=9(room) writes[remainder]",
		},
		{
			name: "equal priorities take turns",
			in: GroupInput{Members: []MemberInput{remainder("a", 0), remainder("b", 0)},
				Room: room(1, 2, nil, node(700, 110))},
			want: "a=4(room) b=3(room) writes[b,a]", // the smaller growth first
		},
		{
			name: "members that disagree on the budget: the smallest holds, and it is said",
			in: GroupInput{Members: []MemberInput{consumer(1, 0, "group-max-replicas", "6"), remainder("remainder", 0, "group-max-replicas", "4")},
				Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=1 remainder=3(budget) writes[remainder] budget-conflict(4)",
		},
		{
			name: "a paused member keeps its replicas and is never written",
			in:   GroupInput{Members: []MemberInput{consumer(3, 1000, "paused", "true"), remainder("remainder", 0)}, Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=3(paused) remainder=7(room) writes[remainder]",
		},
		{
			name: "room unknown: the remainder holds, the consumer still grows",
			in:   GroupInput{Members: []MemberInput{consumer(1, 400), remainder("remainder", 2)}},
			want: "consumer=5 remainder=2(room) writes[consumer] room-unknown",
		},
		{
			name: "a remainder whose pods' priority is too high does not grow, and says why",
			in: GroupInput{Members: []MemberInput{consumer(1, 0), func() MemberInput { m := remainder("remainder", 2); m.NoGrowth = true; return m }()},
				Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=1 remainder=2(priority) writes[]",
		},
		{
			name: "a lone consumer needs no room",
			in:   GroupInput{Members: []MemberInput{consumer(1, 400)}},
			want: "consumer=5 writes[consumer]",
		},
		{
			name: "a lone remainder without room holds",
			in:   GroupInput{Members: []MemberInput{remainder("remainder", 2)}},
			want: "remainder=2(room) writes[] room-unknown",
		},
		{
			name: "an unreadable queue holds its member",
			in: GroupInput{Members: []MemberInput{func() MemberInput { m := consumer(2, 1000); m.QueueKnown = false; return m }(), remainder("remainder", 8)},
				Room: room(1, 2, nil, node(1000, 110))},
			want: "consumer=2(unreadable) remainder=8(room) writes[]",
		},
	}
	// One Scratch lent to every case in turn, as the loop lends one to
	// group after group: what an earlier (larger) group left in it never
	// shows in a later decision.
	shared := &Scratch{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Now, tc.in.Scratch = t0, shared
			_, out := DecideGroup(tc.in, GroupState{})
			if got := describe(tc.in, out); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// A decision that changed nothing makes the group quiet; the next is
// Unchanged only while every member's version, what its rule wants and the
// room's version are the same.
func TestDecideGroupUnchanged(t *testing.T) {
	c := MemberInput{Name: "consumer", Version: "1", Current: 1, Ready: 1,
		Spec:  spec(t, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"),
		Queue: QueueReading{Consumers: 1}, QueueKnown: true}
	r := MemberInput{Name: "remainder", Version: "1", Current: 9, Ready: 9,
		Spec: spec(t, "rule", "remainder", "priority", "2", "max-replicas", "40")}
	var gs GroupState
	members := []MemberInput{c, r}
	rm := room(1, 2, nil, node(1000, 110))
	steps := []struct {
		name      string
		change    func(in *GroupInput)
		unchanged bool
		writes    int
		// held: what holds the consumer and the remainder, when given.
		held string
	}{
		{name: "first decision: full, changes nothing", change: func(*GroupInput) {}, held: "consumer=1 remainder=9(room)"},
		{name: "same inputs: unchanged, held by the same", change: func(*GroupInput) {}, unchanged: true, held: "consumer=1 remainder=9(room)"},
		{name: "a paused consumer says so while unchanged", change: func(in *GroupInput) {
			in.Members = slices.Clone(in.Members)
			in.Members[0].Spec = spec(t, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20", "paused", "true")
		}, unchanged: true, held: "consumer=1(paused) remainder=9(room)"},
		{name: "a member's new version: decided in full", change: func(in *GroupInput) { in.Members[1].Version = "2" }},
		{name: "quiet again", change: func(*GroupInput) {}, unchanged: true},
		{name: "the room moved: decided in full, the remainder grows", change: func(in *GroupInput) {
			in.Room = room(2, 2, nil, node(1500, 110))
		}, writes: 1},
		{name: "a backlog: the queue rule wants more, decided in full", change: func(in *GroupInput) {
			in.Members[1].Current = 14
			in.Members[0].Queue = QueueReading{Backlog: 400, Waiting: 400, Consumers: 1}
		}, writes: 2},
	}
	for i, st := range steps {
		in := GroupInput{Now: t0.Add(time.Duration(i) * time.Second), Members: members, Room: rm}
		st.change(&in)
		rm = in.Room
		var out GroupOutput
		gs, out = DecideGroup(in, gs)
		for j := range members {
			members[j].State = out.States[j]
		}
		if out.Unchanged != st.unchanged || len(out.Writes) != st.writes {
			t.Errorf("%s: unchanged %v, writes %d (%s); want %v, %d", st.name, out.Unchanged, len(out.Writes), describe(in, out), st.unchanged, st.writes)
		}
		if got := strings.Split(describe(in, out), " writes")[0]; st.held != "" && got != st.held {
			t.Errorf("%s: %s, want %s", st.name, got, st.held)
		}
	}
}

// DecideGroup is a function of its input and the states handed in: the
// same states and input give the same decisions and the same next states.
func TestDecideGroupIsPure(t *testing.T) {
	m := MemberInput{Name: "consumer", Version: "1", Current: 2, Ready: 2,
		Spec: spec(t, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"), QueueKnown: true}
	var gs GroupState
	var out GroupOutput
	decide := func(i int, st MemberState, gs GroupState) (GroupState, GroupOutput) {
		in := m
		in.State = st
		// Busy consumers with a growing backlog: the rates, the throughput
		// window and the start-up all learn.
		in.Queue = QueueReading{Backlog: int64(100 + 40*i), Waiting: int64(90 + 40*i), Arrived: int64(100 * i), Consumers: 2}
		return DecideGroup(GroupInput{Now: t0.Add(time.Duration(i) * time.Second), Members: []MemberInput{in}}, gs)
	}
	for i := range 12 {
		gs, out = decide(i, m.State, gs)
		if len(out.States) != 1 {
			t.Fatalf("%d next states for one member", len(out.States))
		}
		m.State = out.States[0]
	}
	gs1, out1 := decide(12, m.State, gs)
	d1, s1 := slices.Clone(out1.Decisions), slices.Clone(out1.States)
	gs2, out2 := decide(12, m.State, gs)
	if !reflect.DeepEqual(d1, out2.Decisions) || !reflect.DeepEqual(s1, out2.States) || !reflect.DeepEqual(gs1, gs2) {
		t.Errorf("the same input and states decided twice differ:\n%+v\n%+v", d1, out2.Decisions)
	}
	if !s1[0].Rates.ArrivalKnown {
		t.Error("the next state learned no arrival rate: the test decides nothing")
	}
}

// The rates are per the time the counts were read, not the tick's: a read
// that a slow nsqd answered late counts the messages of a longer interval.
func TestStepMeasuresOverTheReadTimes(t *testing.T) {
	p := QueuePolicy{Target: 50, Max: 20, ScaleDownDelay: 30 * time.Second}
	var s MemberState
	for i, readAt := range []time.Duration{0, 1500 * time.Millisecond, 3 * time.Second} {
		tick := t0.Add(time.Duration(i) * time.Second)
		s.Step(p, tick, 2, 2, QueueReading{Arrived: int64(150 * i), At: t0.Add(readAt)}, true)
	}
	if !s.Rates.ArrivalKnown || math.Abs(s.Rates.Arrival-100) > 1e-9 {
		t.Errorf("arrival = %v (known %v), want 100/s: 150 messages a 1.5 s read interval", s.Rates.Arrival, s.Rates.ArrivalKnown)
	}
}

// The interval pattern of the stall found on the real stack (a linear rise
// to 56 msg/s, 8 msg/s a replica, 4 held in flight): one replica learns its
// 8/s, then four replicas are connected and consuming while Kubernetes
// counts one Ready (the others' readiness probes failing under load). The
// rate must stay per replica that consumed (it read 31.99/s, the four's
// total, and the rule held 4 while the backlog ran to 1,850), so the rule
// asks for the 7 the load needs.
func TestStepAttributesTheRateToTheReplicasConsuming(t *testing.T) {
	p := QueuePolicy{Target: 30, Min: 1, Max: 40, ScaleDownDelay: 30 * time.Second}
	var s MemberState
	backlog, arrived := int64(40), int64(0)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	for i := range 4 { // one replica, busy: 10/s arrive, 8/s done
		s.Step(p, at(i), 1, 1, QueueReading{Backlog: backlog, Waiting: backlog - 4, Arrived: arrived, Consumers: 1}, true)
		arrived, backlog = arrived+10, backlog+2
	}
	if math.Abs(s.Rates.Service-8) > 0.5 {
		t.Fatalf("one busy replica measured %.2f/s, want 8", s.Rates.Service)
	}
	// Four connected, one Ready; 52-56/s arrive, 4 x 8 = 32/s done, as
	// nsqd answered them a second apart in the run.
	var most int32
	for i := 4; i < 20; i++ {
		rate := int64(min(52+i/4, 56))
		d := s.Step(p, at(i), 4, 1, QueueReading{Backlog: backlog, Waiting: backlog - 16, Arrived: arrived, Consumers: 4}, true)
		most = max(most, d.Replicas)
		arrived, backlog = arrived+rate, backlog+rate-32
	}
	if math.Abs(s.Rates.Service-8) > 0.5 {
		t.Errorf("service = %.2f/s per replica, want 8: the four replicas' throughput was divided among fewer", s.Rates.Service)
	}
	if most < 7 {
		t.Errorf("asked for at most %d replicas, want at least 7 for 56/s at 8/s a replica", most)
	}
}

// A queue that counts no arrivals (a Redis list) is sized from its backlog
// alone: a simulated load of 40/s on replicas that each do 10/s. The rule
// grows while the backlog is above target, holds the backlog near it, and
// once the load stops gives replicas back one at a time, each after the
// scale-down delay; it never learns a rate it cannot know.
func TestStepWithoutArrivalsSizesFromTheBacklog(t *testing.T) {
	p := QueuePolicy{Target: 100, Min: 0, Max: 20, ScaleDownDelay: 30 * time.Second}
	var s MemberState
	cur, backlog := int32(1), int64(0)
	var peak int32
	lastChange := 0
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	for i := range 400 {
		rate := int64(40)
		if i >= 200 {
			rate = 0
		}
		backlog = max(0, backlog+rate-int64(cur)*10)
		d := s.Step(p, at(i), cur, cur, QueueReading{Backlog: backlog, Waiting: backlog, NoArrivals: true}, true)
		if s.Rates.ArrivalKnown || s.Rates.ServiceKnown {
			t.Fatalf("tick %d: a rate was learnt without arrivals: %+v", i, s.Rates)
		}
		if i >= 20 && i < 200 && backlog > 2*p.Target {
			t.Fatalf("tick %d: backlog %d under load with %d replicas, want at most twice the target", i, backlog, cur)
		}
		if d.Replicas < cur && i-lastChange < int(p.ScaleDownDelay/time.Second) {
			t.Fatalf("tick %d: shrank %d -> %d %ds after the last change, within the scale-down delay", i, cur, d.Replicas, i-lastChange)
		}
		if d.Replicas != cur {
			lastChange = i
		}
		cur = d.Replicas
		peak = max(peak, cur)
	}
	if peak < 4 {
		t.Errorf("peaked at %d replicas, want at least the 4 that 40/s needs", peak)
	}
	if cur > 2 {
		t.Errorf("%d replicas 200 s after the load stopped (peak %d), want at most 2", cur, peak)
	}
}

// A member reading a Redis list beside an NSQ channel has no arrival count
// for the sum: the sum must say so, or the rule would learn a rate from
// the NSQ half alone and take it for the whole.
func TestPlusKeepsWhatTheSumCannotGive(t *testing.T) {
	t0 := time.Unix(1000, 0)
	nsq := QueueReading{Backlog: 30, Waiting: 20, Arrived: 500, Consumers: 3, At: t0}
	list := QueueReading{Backlog: 7, Waiting: 7, NoArrivals: true, At: t0.Add(time.Second)}
	got := QueueReading{}.Plus(nsq).Plus(list)
	want := QueueReading{Backlog: 37, Waiting: 27, Arrived: 500, NoArrivals: true, Consumers: 3, At: t0.Add(time.Second)}
	if got != want {
		t.Errorf("sum = %+v, want %+v", got, want)
	}
	if got := (QueueReading{}).Plus(nsq).Plus(nsq); got.NoArrivals || got.Arrived != 1000 || got.Consumers != 3 {
		t.Errorf("two counted queues = %+v, want arrivals 1000 counted, 3 consumers", got)
	}
}

// A member's state holds what its rule uses: a remainder, never decided by
// the queue rule, keeps no demand window; a queue member without a wait
// goal keeps no arrival ring (30,000 members: tens of megabytes).
func TestStateSizedByUse(t *testing.T) {
	in := GroupInput{Members: []MemberInput{
		{Name: "consumer", Current: 1, Ready: 1, Spec: spec(t, "queue", "nsq://h:4151/t/c", "target-queue-length", "50", "max-replicas", "20"), QueueKnown: true},
		{Name: "waits", Current: 1, Ready: 1, Spec: spec(t, "queue", "nsq://h:4151/u/c", "target-wait", "5s", "max-replicas", "20"), QueueKnown: true},
		{Name: "remainder", Current: 1, Spec: spec(t, "rule", "remainder", "priority", "9", "max-replicas", "5")},
	}}
	var gs GroupState
	var out GroupOutput
	for i := range 3 {
		in.Now = t0.Add(time.Duration(i) * time.Second)
		for j := range in.Members {
			in.Members[j].Queue = QueueReading{Backlog: 10, Arrived: int64(10 * i)}
		}
		gs, out = DecideGroup(in, gs)
		for j := range in.Members {
			in.Members[j].State = out.States[j]
		}
	}
	consumer, waits, rem := out.States[0].Queue, out.States[1].Queue, out.States[2].Queue
	if consumer.window.b == nil || waits.wait.h == nil {
		t.Fatal("the queue members kept no window or ring: the test decides nothing")
	}
	if consumer.wait.h != nil {
		t.Error("a member without target-wait keeps an arrival ring")
	}
	if rem.window.b != nil || rem.wait.h != nil {
		t.Error("a remainder keeps a demand window or an arrival ring")
	}
}
