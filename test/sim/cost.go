package sim

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Cost at a wait goal: comparing p95 waits at unequal cost says little (a
// lower p95 can always be bought with more replicas), so each policy's
// knobs are swept over a fixed grid, and a policy is scored by the fewest
// replica-seconds (median seed) among its settings that meet the goal on
// at least MeetShare of the seeds, divided by the trace's work content
// (its messages' handling time: what any policy spends at least).

// MeetShare is the share of seeds a setting must meet the goal on.
const MeetShare = 0.8

// Setting is one policy at one point of its knob grid.
type Setting struct {
	Family string // microscaling, keda-hpa, engine-pd
	Knobs  string
	New    func() Policy
}

// Settings is the grid every trace is swept over, for a goal and a max
// replicas every policy runs with: ours over target-wait and
// target-queue-length, the HPA as KEDA drives it over its threshold,
// polling interval and stabilisation window, the engine over its target
// and gains (its max replicas being the row's).
func Settings(w World, goal time.Duration, maxReplicas int32) []Setting {
	w.Max = maxReplicas
	var out []Setting
	for _, f := range []float64{0.25, 0.5, 1} {
		wait := time.Duration(f * float64(goal)).Round(100 * time.Millisecond)
		out = append(out, Setting{"microscaling", "target-wait " + wait.String(), func() Policy {
			m := NewMicroscalingWait(w, wait)
			m.Policy.Max = maxReplicas
			return m
		}})
	}
	for _, target := range []int64{10, 50, 200} {
		out = append(out, Setting{"microscaling", fmt.Sprintf("target-queue-length %d", target), func() Policy {
			m := NewMicroscaling(w)
			m.Policy.Target, m.Policy.Max = target, maxReplicas
			return m
		}})
	}
	for _, th := range []float64{5, 25} {
		for _, poll := range []time.Duration{5 * time.Second, 30 * time.Second} {
			for _, stab := range []time.Duration{60 * time.Second, 300 * time.Second} {
				out = append(out, Setting{"keda-hpa", fmt.Sprintf("threshold %.0f, polling %s, stabilization %s", th, poll, stab), func() Policy {
					return &KEDAHPA{Threshold: th, Max: maxReplicas, Polling: poll, Stabilization: stab}
				}})
			}
		}
	}
	for _, target := range []int64{10, 50} {
		for _, gain := range []float64{0.5, 1, 2} {
			out = append(out, Setting{"engine-pd", fmt.Sprintf("target %d, gains x%g", target, gain), func() Policy {
				return &Engine{Target: target, Max: maxReplicas, MaxDelta: 5, Gain: gain}
			}})
		}
	}
	return out
}

// CostPoint is one setting's medians over the seeds.
type CostPoint struct {
	Knobs string
	// P95 is the median p95 wait (s); Cost the median replica-seconds over
	// the work content; Met how many seeds' p95 was within the goal.
	P95, Cost  float64
	Met, Seeds int
	Reversals  float64
}

// Meets says whether the point meets the goal on MeetShare of the seeds.
func (c CostPoint) Meets() bool { return float64(c.Met) >= MeetShare*float64(c.Seeds)-1e-9 }

// GoalRow is one trace at one goal and one max replicas.
type GoalRow struct {
	Trace       string
	Smooth      bool
	Max         int32
	Goal        time.Duration
	WorkContent float64 // replica-seconds
	// Oracle is max replicas from the first message: its p95 is the floor
	// no policy waits under, and what it costs.
	Oracle CostPoint
	// Curves are each family's settings, cheapest first; Best the cheapest
	// that meets the goal (nil: none does).
	Curves map[string][]CostPoint
	Best   map[string]*CostPoint
	// Wait5 is ours with only target-wait 5s.
	Wait5 CostPoint
}

// Families are the compared policies, ours first.
var Families = []string{"microscaling", "keda-hpa", "engine-pd"}

// CostAtGoal sweeps every trace for each max replicas (0: the world's;
// -2: twice what the trace needs) over seeds, at the goal max(5 s, the
// oracle's p95 + 1 s). progress is told each trace as it is done.
func CostAtGoal(w World, traces []Trace, seeds []uint64, maxes []int32, progress func(string)) []GoalRow {
	var rows []GoalRow
	for _, tr := range traces {
		for _, mx := range maxes {
			top := w.Max
			if mx == -2 {
				top = 2 * tr.needed(w)
			}
			row := GoalRow{Trace: tr.Name, Smooth: tr.Smooth, Max: top, WorkContent: workContent(w, tr),
				Curves: map[string][]CostPoint{}, Best: map[string]*CostPoint{}}
			row.Oracle = sweep(w, tr, seeds, 0, row.WorkContent, Setting{"oracle", "max replicas from the start", func() Policy { return &Oracle{Max: top} }})
			row.Goal = time.Duration(math.Max(5, row.Oracle.P95+1) * float64(time.Second)).Round(100 * time.Millisecond)
			for _, s := range Settings(w, row.Goal, top) {
				row.Curves[s.Family] = append(row.Curves[s.Family], sweep(w, tr, seeds, row.Goal, row.WorkContent, s))
			}
			wait5 := w
			wait5.Max = top
			row.Wait5 = sweep(w, tr, seeds, 5*time.Second, row.WorkContent, Setting{"microscaling", "target-wait 5s", func() Policy { return NewMicroscalingWait(wait5, 5*time.Second) }})
			for _, f := range Families {
				c := row.Curves[f]
				slices.SortFunc(c, func(a, b CostPoint) int { return cmpFloat(a.Cost, b.Cost) })
				for i := range c {
					if c[i].Meets() {
						row.Best[f] = &c[i]
						break
					}
				}
			}
			rows = append(rows, row)
			if progress != nil {
				progress(fmt.Sprintf("%s, max %d", tr.Name, top))
			}
		}
	}
	return rows
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sweep runs one setting on every seed (on two cores) and takes medians.
func sweep(w World, tr Trace, seeds []uint64, goal time.Duration, work float64, s Setting) CostPoint {
	res := make([]Result, len(seeds))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 2 {
		wg.Go(func() {
			for i := range next {
				res[i] = Run(w, tr, s.New(), seeds[i])
			}
		})
	}
	for i := range seeds {
		next <- i
	}
	close(next)
	wg.Wait()
	p := CostPoint{Knobs: s.Knobs, Seeds: len(seeds)}
	var p95, cost, rev []float64
	for _, r := range res {
		p95, cost, rev = append(p95, r.WaitP95), append(cost, r.ReplicaSeconds/work), append(rev, float64(r.Reversals))
		if goal > 0 && r.WaitP95 <= goal.Seconds() {
			p.Met++
		}
	}
	p.P95, p.Cost, p.Reversals = median(p95), median(cost), median(rev)
	return p
}

func median(v []float64) float64 {
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// workContent is the replica-seconds the trace's messages take to handle.
func workContent(w World, tr Trace) float64 {
	msgs := 0.0
	for t := time.Duration(0); t < tr.Duration; t += 100 * time.Millisecond {
		msgs += tr.Rate(t) * 0.1
	}
	for _, b := range tr.Bursts {
		msgs += float64(b.Messages)
	}
	return msgs / w.ServiceRate
}

// GoalVerdict is the goal on one row: ours meets the goal wherever any
// baseline setting does, at no more than half the cheapest baseline
// setting that does; with only target-wait 5s, p95 within 5 s wherever the
// oracle's floor is under 4 s; on a smooth trace, at most 1.25x the work
// content; no reversal inside a monotonic stretch (median seed).
func GoalVerdict(r GoalRow) (ok bool, why string) {
	var misses []string
	ours := r.Best["microscaling"]
	var cheapest *CostPoint
	for _, f := range Families[1:] {
		if b := r.Best[f]; b != nil && (cheapest == nil || b.Cost < cheapest.Cost) {
			cheapest = b
		}
	}
	switch {
	case ours == nil && cheapest != nil:
		misses = append(misses, "no setting of ours meets the goal where a baseline's does")
	case ours != nil && cheapest != nil && ours.Cost > 0.5*cheapest.Cost:
		misses = append(misses, fmt.Sprintf("%.2fx the cheapest baseline (want <= 0.5x)", ours.Cost/cheapest.Cost))
	}
	if r.Oracle.P95 < 4 && r.Wait5.P95 > 5 {
		misses = append(misses, fmt.Sprintf("target-wait 5s waits %.1f s at p95", r.Wait5.P95))
	}
	if ours != nil && r.Smooth && ours.Cost > 1.25 {
		misses = append(misses, fmt.Sprintf("%.2fx the work content on a smooth trace (want <= 1.25x)", ours.Cost))
	}
	if ours != nil && ours.Reversals > 0 {
		misses = append(misses, fmt.Sprintf("%g reversals (median seed)", ours.Reversals))
	}
	return len(misses) == 0, strings.Join(misses, "; ")
}

// GoalTable renders rows: per trace and max, the goal, the floors, each
// family's cheapest setting meeting it, and the verdict of each seed set
// (verdicts[i][j]: row j on seed set i).
func GoalTable(rows []GoalRow, verdicts [][]bool) string {
	var b strings.Builder
	b.WriteString("| trace | max | goal (p95) | oracle p95 / cost | microscaling | keda-hpa | engine-pd | ours / cheapest baseline | target-wait 5s | verdict per seed set |\n")
	b.WriteString("|---|---:|---:|---:|---|---|---|---:|---:|---|\n")
	cell := func(c *CostPoint) string {
		if c == nil {
			return "none meets it"
		}
		return fmt.Sprintf("%.2fx (p95 %.1f s; %s)", c.Cost, c.P95, c.Knobs)
	}
	for j, r := range rows {
		ratio := "-"
		var cheapest *CostPoint
		for _, f := range Families[1:] {
			if c := r.Best[f]; c != nil && (cheapest == nil || c.Cost < cheapest.Cost) {
				cheapest = c
			}
		}
		if o := r.Best["microscaling"]; o != nil && cheapest != nil {
			ratio = fmt.Sprintf("%.2fx", o.Cost/cheapest.Cost)
		}
		var vs []string
		for _, set := range verdicts {
			v := "missed"
			if set[j] {
				v = "met"
			}
			vs = append(vs, v)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.1f s / %.2fx | %s | %s | %s | %s | %.1f s, %.2fx | %s |\n", r.Trace, r.Max, r.Goal, r.Oracle.P95, r.Oracle.Cost,
			cell(r.Best["microscaling"]), cell(r.Best["keda-hpa"]), cell(r.Best["engine-pd"]), ratio, r.Wait5.P95, r.Wait5.Cost, strings.Join(vs, " / "))
	}
	return b.String()
}

// Curves renders each row's cost-versus-p95 curve: every setting of each
// family as (p95 s, cost x), cheapest first, those meeting the goal marked.
func Curves(rows []GoalRow) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "- %s, max %d, goal %s (work content %.0f replica-seconds):\n", r.Trace, r.Max, r.Goal, r.WorkContent)
		for _, f := range Families {
			var pts []string
			for _, c := range r.Curves[f] {
				mark := ""
				if c.Meets() {
					mark = "*"
				}
				pts = append(pts, fmt.Sprintf("%.1f s %.2fx%s", c.P95, c.Cost, mark))
			}
			fmt.Fprintf(&b, "  - %s: %s\n", f, strings.Join(pts, ", "))
		}
	}
	return b.String()
}
