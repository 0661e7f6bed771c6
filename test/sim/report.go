package sim

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Summary is one policy on one trace: the median over seeds of each score,
// the worst seed's reversals, and the first seed's run for plots.
type Summary struct {
	Policy, Trace               string
	Seeds                       int
	WaitP50, WaitP95, WaitP99   float64
	ReplicaSeconds, PeakBacklog float64
	PeakReplicas, ScaleOps      float64
	Needed                      int32
	Reversals                   float64
	ReversalsWorst              int
	// FellBehind counts the seeds whose run fell behind (Result.FellBehind).
	FellBehind int
	Plot       Result
}

// RunAll runs every policy on every trace of length d (the long ones) for
// seeds 1..seeds, on every core.
func RunAll(w World, d time.Duration, seeds int) [][]Summary {
	traces := Traces(d)
	results := make([][][]Result, len(traces)) // trace, policy, seed
	type job struct{ tr, seed int }
	jobs := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 2 {
		wg.Go(func() {
			for j := range jobs {
				tr := traces[j.tr]
				ps := Policies(w, tr)
				out := make([]Result, len(ps))
				for i, p := range ps {
					out[i] = Run(w, tr, p, uint64(j.seed))
				}
				mu.Lock()
				if results[j.tr] == nil {
					results[j.tr] = make([][]Result, len(ps))
				}
				for i := range out {
					results[j.tr][i] = append(results[j.tr][i], out[i])
				}
				mu.Unlock()
			}
		})
	}
	for t := range traces {
		for s := 1; s <= seeds; s++ {
			jobs <- job{t, s}
		}
	}
	close(jobs)
	wg.Wait()
	rows := make([][]Summary, len(traces))
	for t, byPolicy := range results {
		for _, runs := range byPolicy {
			slices.SortFunc(runs, func(a, b Result) int { return int(a.Seed) - int(b.Seed) })
			rows[t] = append(rows[t], summarize(runs))
		}
	}
	return rows
}

func summarize(runs []Result) Summary {
	med := func(f func(Result) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	s := Summary{
		Policy: runs[0].Policy, Trace: runs[0].Trace, Seeds: len(runs), Needed: runs[0].Needed, Plot: runs[0],
		WaitP50:        med(func(r Result) float64 { return r.WaitP50 }),
		WaitP95:        med(func(r Result) float64 { return r.WaitP95 }),
		WaitP99:        med(func(r Result) float64 { return r.WaitP99 }),
		ReplicaSeconds: med(func(r Result) float64 { return r.ReplicaSeconds }),
		PeakBacklog:    med(func(r Result) float64 { return r.PeakBacklog }),
		PeakReplicas:   med(func(r Result) float64 { return float64(r.PeakReplicas) }),
		ScaleOps:       med(func(r Result) float64 { return float64(r.ScaleOps) }),
		Reversals:      med(func(r Result) float64 { return float64(r.Reversals) }),
	}
	for _, r := range runs {
		s.ReversalsWorst = max(s.ReversalsWorst, r.Reversals)
		if r.FellBehind {
			s.FellBehind++
		}
	}
	return s
}

// Table renders summaries as a Markdown table.
func Table(rows [][]Summary) string {
	var b strings.Builder
	b.WriteString("| trace | policy | wait p50 / p95 / p99 (s) | replica-seconds | peak replicas (needed) | scale ops | reversals (worst seed) | peak backlog | fell behind (seeds) |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range rows {
		for _, r := range row {
			fmt.Fprintf(&b, "| %s | %s | %.2f / %.2f / %.2f | %.0f | %.0f (%d) | %.0f | %.0f (%d) | %.0f | %d of %d |\n",
				r.Trace, r.Policy, r.WaitP50, r.WaitP95, r.WaitP99, r.ReplicaSeconds, r.PeakReplicas, r.Needed,
				r.ScaleOps, r.Reversals, r.ReversalsWorst, r.PeakBacklog, r.FellBehind, r.Seeds)
		}
	}
	return b.String()
}

// Verdict says whether microscaling (row[0]) met the goal on a trace against
// the KEDA/HPA model (row[1]) and the original engine (row[2]), on the
// medians over the seeds as the goal is stated: lower p95 wait than both at
// no more replica-seconds than either, no reversal inside a monotonic
// stretch, at least 5x fewer scale operations than the engine, and on no
// seed falling behind (see FellBehindFactor). Reversals on the worst seed,
// and every other policy that fell behind, are named whether or not the
// goal is met.
func Verdict(row []Summary) (ok bool, why string) {
	m, hpa, eng := row[0], row[1], row[2]
	var misses []string
	if m.WaitP95 >= hpa.WaitP95 || m.WaitP95 >= eng.WaitP95 {
		misses = append(misses, fmt.Sprintf("p95 wait %.2fs vs HPA %.2fs, engine %.2fs", m.WaitP95, hpa.WaitP95, eng.WaitP95))
	}
	if m.ReplicaSeconds > hpa.ReplicaSeconds || m.ReplicaSeconds > eng.ReplicaSeconds {
		misses = append(misses, fmt.Sprintf("replica-seconds %.0f vs HPA %.0f (%.2fx), engine %.0f (%.2fx)",
			m.ReplicaSeconds, hpa.ReplicaSeconds, m.ReplicaSeconds/hpa.ReplicaSeconds, eng.ReplicaSeconds, m.ReplicaSeconds/eng.ReplicaSeconds))
	}
	if m.Reversals > 0 {
		misses = append(misses, fmt.Sprintf("%g reversals (median)", m.Reversals))
	}
	if 5*m.ScaleOps > eng.ScaleOps {
		misses = append(misses, fmt.Sprintf("%.0f scale ops vs the engine's %.0f (want 5x fewer)", m.ScaleOps, eng.ScaleOps))
	}
	// Falling behind fails any policy: a run is no cheaper for letting the
	// queue run away. Ours misses the goal on it; the others are named.
	if m.FellBehind > 0 {
		misses = append(misses, fmt.Sprintf("fell behind on %d of %d seeds", m.FellBehind, m.Seeds))
	}
	notes := misses
	for _, o := range row[1:] {
		if o.FellBehind > 0 {
			notes = append(notes[:len(notes):len(notes)], fmt.Sprintf("%s fell behind on %d of %d seeds", o.Policy, o.FellBehind, o.Seeds))
		}
	}
	if m.ReversalsWorst > 0 {
		notes = append(notes[:len(notes):len(notes)], fmt.Sprintf("%d reversals on the worst seed", m.ReversalsWorst))
	}
	return len(misses) == 0, strings.Join(notes, "; ")
}

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

// SVG draws one trace's first seed: one row per policy, its backlog (axis
// clipped at 4x the target, the target dashed) on the left and its replicas
// (the replicas the rate needs dashed) on the right.
func SVG(row []Summary, w World, tr Trace) string {
	const width, rowH, pad, gap = 960, 150, 40, 30
	panelW := (width - 3*pad) / 2
	height := pad + len(row)*(rowH+gap) + 10
	maxT := tr.Duration.Seconds()
	maxB := 4 * float64(w.Target)
	maxR := float64(max(row[0].Needed, 1))
	for _, s := range row {
		for _, p := range s.Plot.Points {
			maxR = math.Max(maxR, float64(p.Replicas))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="18" font-size="15">%s (seed 1; time 0 to %.0f s)</text>`+"\n", pad, tr.Name, maxT)
	for i, s := range row {
		top := pad + i*(rowH+gap)
		c := colors[i%len(colors)]
		panel := func(left int, label string, maxV float64, value func(Point) float64, ref func(float64) float64) {
			x := func(t float64) float64 { return float64(left) + t/maxT*float64(panelW) }
			y := func(v float64) float64 { return float64(top+rowH) - math.Min(v, maxV)/maxV*float64(rowH) }
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, top, panelW, rowH)
			fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s: %s (axis 0 to %.0f)</text>`+"\n", left, top-5, c, s.Policy, label, maxV)
			var ref0, pts []string
			for t := 0.0; t < maxT; t += 1 {
				ref0 = append(ref0, fmt.Sprintf("%.1f,%.1f", x(t), y(ref(t))))
			}
			for _, p := range s.Plot.Points {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.T.Seconds()), y(value(p))))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="#000" stroke-dasharray="4 3" points="%s"/>`+"\n", strings.Join(ref0, " "))
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.3" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		}
		panel(pad, "backlog", maxB, func(p Point) float64 { return p.Backlog }, func(float64) float64 { return float64(w.Target) })
		rate := tr.rateFunc(1)
		panel(2*pad+panelW, "replicas", maxR, func(p Point) float64 { return float64(p.Replicas) }, func(t float64) float64 {
			return math.Ceil(rate(time.Duration(t*float64(time.Second))) / w.ServiceRate)
		})
	}
	b.WriteString("</svg>\n")
	return b.String()
}
