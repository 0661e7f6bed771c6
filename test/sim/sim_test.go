package sim

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRunIsDeterministic(t *testing.T) {
	tr := Traces(time.Minute)[0]
	a := Run(DefaultWorld, tr, NewMicroscaling(DefaultWorld), 3)
	b := Run(DefaultWorld, tr, NewMicroscaling(DefaultWorld), 3)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("two runs with one seed differ:\n%+v\n%+v", a, b)
	}
}

// TestWorldHoldsInFlight checks the world's NSQ semantics with a policy that
// never scales: a consumer holds MaxInFlight messages while more wait, the
// backlog counts them, and waits grow with the queue.
func TestWorldHoldsInFlight(t *testing.T) {
	w := DefaultWorld
	obs := &recorder{want: 2}
	tr := Trace{Name: "flat", Duration: 60 * time.Second, Rate: func(time.Duration) float64 { return 40 }}
	r := Run(w, tr, obs, 1)
	last := obs.seen[len(obs.seen)-1]
	if last.Consuming != 2 {
		t.Fatalf("consuming = %d, want 2", last.Consuming)
	}
	if got := last.Backlog - last.Waiting; got != int64(2*w.MaxInFlight) {
		t.Errorf("in flight = %d with messages waiting, want %d (2 consumers x MaxInFlight)", got, 2*w.MaxInFlight)
	}
	// 40/s against 2 x 10/s: about 20/s pile up, 1,200 in a minute.
	if last.Backlog < 900 || last.Backlog > 1500 {
		t.Errorf("backlog after 60 s = %d, want about 1,200", last.Backlog)
	}
	if r.WaitP99 < 20 {
		t.Errorf("p99 wait %.1fs on an overloaded queue, want > 20 s", r.WaitP99)
	}
}

type recorder struct {
	want int32
	seen []Observation
}

func (r *recorder) Name() string            { return "fixed" }
func (r *recorder) Interval() time.Duration { return time.Second }
func (r *recorder) Decide(o Observation) int32 {
	r.seen = append(r.seen, o)
	return r.want
}

// TestGoalsOnTheBenchmarkTraces runs the benchmark's traces with three seeds
// and holds what BENCHMARKS.md reports as met: no more replica-seconds than
// the KEDA/HPA model with its defaults, reversals inside monotonic
// stretches at most one (median) or a tenth of the engine's (sine), and no
// seed that fell behind. Waits are compared at equal goals by
// TestCostAtGoal, not at unequal cost.
func TestGoalsOnTheBenchmarkTraces(t *testing.T) {
	rows := RunAll(DefaultWorld, 15*time.Minute, 3)
	for _, row := range rows {
		t.Run(row[0].Trace, func(t *testing.T) {
			m, hpa, eng := row[0], row[1], row[2]
			if m.Policy != "microscaling" || hpa.Policy != "keda-hpa" || eng.Policy != "engine-pd" {
				t.Fatalf("policies out of order: %s %s %s", m.Policy, hpa.Policy, eng.Policy)
			}
			if m.Reversals > 1 && 10*m.Reversals > eng.Reversals {
				t.Errorf("%.0f reversals inside a monotonic stretch (median), the engine %.0f", m.Reversals, eng.Reversals)
			}
			if m.FellBehind > 0 {
				t.Errorf("fell behind on %d of %d seeds: backlog above %dx the target for over %s", m.FellBehind, m.Seeds, FellBehindFactor, FellBehindFor)
			}
			if m.ReplicaSeconds > hpa.ReplicaSeconds {
				t.Errorf("replica-seconds %.0f, more than the HPA's %.0f", m.ReplicaSeconds, hpa.ReplicaSeconds)
			}
		})
	}
}

func TestSVG(t *testing.T) {
	trs := Traces(time.Minute)
	row := RunAll(DefaultWorld, time.Minute, 1)[0]
	svg := SVG(row, DefaultWorld, trs[0])
	for _, want := range []string{"<svg", "polyline", "microscaling", "keda-hpa", "engine-pd", "</svg>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

// The stall found on the real stack, in the simulator's world: a slow rise
// while Kubernetes counts one pod Ready and every started pod consumes. The
// rule must keep up (never fall behind) on every seed, as it does with
// every pod Ready.
func TestRiseWithPodsNotReadyKeepsUp(t *testing.T) {
	tr := Traces(15 * time.Minute)[len(Traces(time.Minute))-1]
	if tr.Name != "rise-hold" {
		t.Fatalf("last trace is %s, want rise-hold", tr.Name)
	}
	for _, oneReady := range []bool{false, true} {
		w := RealStackWorld
		w.OneReady = oneReady
		for seed := uint64(1); seed <= 5; seed++ {
			r := Run(w, tr, NewMicroscaling(w), seed)
			if r.FellBehind || r.PeakReplicas < r.Needed {
				t.Errorf("one Ready %v, seed %d: fell behind %v (backlog above %dx target for %s), peak replicas %d of %d needed",
					oneReady, seed, r.FellBehind, FellBehindFactor, r.Behind, r.PeakReplicas, r.Needed)
			}
		}
	}
}

// Consumers that take 15 s to start, a load that steps from 10 to 50 msg/s
// (5 replicas needed): neither rule keeps adding replicas while those it
// asked for start, and both learn the start-up. The 15 s pile up about
// 600 messages: the backlog rule drains them over its 45 s horizon (at
// most 8 replicas), the wait rule sooner (at most 12); a rule that did not
// count the replicas on the way went to 19 here.
func TestSlowStartDoesNotOvershoot(t *testing.T) {
	w := RealStackWorld
	w.StartMin, w.StartMax, w.StartSpread, w.Max = 15*time.Second, 15*time.Second, 0, 40
	tr := Trace{Name: "slow-start", Duration: 150 * time.Second, Rate: func(d time.Duration) float64 {
		switch {
		case d < 5*time.Second:
			return 10
		case d < 120*time.Second:
			return 50
		}
		return 0
	}}
	for _, c := range []struct {
		new  func() *Microscaling
		peak int32
	}{
		{func() *Microscaling { return NewMicroscaling(w) }, 8},
		{func() *Microscaling { return NewMicroscalingWait(w, 5*time.Second) }, 12},
	} {
		for seed := uint64(1); seed <= 3; seed++ {
			p := c.new()
			r := Run(w, tr, p, seed)
			if r.PeakReplicas > c.peak {
				t.Errorf("%s, seed %d: peak %d replicas for 5 needed, want at most %d", p.Name(), seed, r.PeakReplicas, c.peak)
			}
			if got := p.state.Startup(); got < 15*time.Second || got > 17*time.Second {
				t.Errorf("%s, seed %d: learned start-up %v, want about 15 s", p.Name(), seed, got)
			}
		}
	}
}

// The wait goal on the burst + steady trace in the real stack's world, as
// `make bench-burst` runs it (medians of 5 seeds): p95 near the 5 s goal
// (this world learns the rate one tick later than the real stack, where
// it is 4.3 s) at no more than 1.10x the work content (700 replica-seconds
// over the load), where the backlog target waits about twice as long.
func TestWaitGoalOnTheBurst(t *testing.T) {
	w := RealStackWorld
	tr := Traces(time.Minute)[0]
	var p95, rs, backlogP95 []float64
	for seed := uint64(1); seed <= 5; seed++ {
		r := Run(w, tr, NewMicroscalingWait(w, 5*time.Second), seed)
		p95, rs = append(p95, r.WaitP95), append(rs, r.ReplicaSecondsBetween(5*time.Second, 65*time.Second))
		backlogP95 = append(backlogP95, Run(w, tr, NewMicroscaling(w), seed).WaitP95)
	}
	med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	if m := med(p95); m > 5.5 {
		t.Errorf("median p95 wait %.1f s, want within 10%% of the 5 s goal (seeds: %v)", m, p95)
	}
	if m := med(rs); m > 1.10*700 {
		t.Errorf("median %.0f replica-seconds over the load, over 1.10x the work content 700 (seeds: %v)", m, rs)
	}
	if m, b := med(p95), med(backlogP95); m > 0.6*b {
		t.Errorf("median p95 %.1f s with the wait goal, not under 0.6x the backlog target's %.1f s", m, b)
	}
}

// TestCostAtGoal sweeps each policy's knobs on three traces (5 minutes, 5
// seeds): ours meets the wait goal and does so for less than the cheapest
// baseline setting that meets it.
func TestCostAtGoal(t *testing.T) {
	var traces []Trace
	for _, tr := range Traces(5 * time.Minute) {
		if tr.Name == "ramp" || tr.Name == "step-up" || tr.Name == "sine" {
			traces = append(traces, tr)
		}
	}
	rows := CostAtGoal(DefaultWorld, traces, []uint64{1, 2, 3, 4, 5}, []int32{0}, nil)
	for _, r := range rows {
		ours := r.Best["microscaling"]
		if ours == nil {
			t.Errorf("%s: no setting of ours meets the %s goal", r.Trace, r.Goal)
			continue
		}
		for _, f := range Families[1:] {
			if b := r.Best[f]; b != nil && b.Cost <= ours.Cost {
				t.Errorf("%s: %s meets the %s goal at %.2fx the work content (%s), ours at %.2fx (%s)", r.Trace, f, r.Goal, b.Cost, b.Knobs, ours.Cost, ours.Knobs)
			}
		}
		t.Logf("%s: ours %.2fx (%s); %s", r.Trace, ours.Cost, ours.Knobs, func() string { _, why := GoalVerdict(r); return why }())
	}
}
