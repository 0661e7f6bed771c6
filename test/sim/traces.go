package sim

import (
	"math"
	"time"
)

// Traces are the producer patterns of the benchmark, each d long.
func Traces(d time.Duration) []Trace {
	at := func(f float64) time.Duration { return time.Duration(f * float64(d)) }
	return []Trace{
		{Name: "step-up", Duration: d, Rate: func(t time.Duration) float64 {
			if t < at(0.2) {
				return 20
			}
			return 200
		}},
		{Name: "step-down", Duration: d, Rate: func(t time.Duration) float64 {
			if t < at(0.4) {
				return 200
			}
			return 20
		}},
		{Name: "ramp", Duration: d, Rate: func(t time.Duration) float64 {
			x := t.Seconds() / d.Seconds()
			return 300 * (1 - math.Abs(2*x-1))
		}},
		{Name: "bursts", Duration: d, Rate: func(t time.Duration) float64 {
			if math.Mod(t.Seconds(), 90) < 10 {
				return 300
			}
			return 30
		}},
		{Name: "sine", Duration: d, Rate: func(t time.Duration) float64 {
			return 100 + 80*math.Sin(2*math.Pi*t.Seconds()/180)
		}},
		{Name: "constant", Duration: d, Rate: func(time.Duration) float64 { return 100 }},
		{Name: "quiet", Duration: d, Rate: func(time.Duration) float64 { return 0 }},
	}
}

// meanRate is the trace's average arrival rate.
func meanRate(tr Trace, step time.Duration) float64 {
	sum, n := 0.0, 0
	for t := time.Duration(0); t < tr.Duration; t += step {
		sum += tr.Rate(t)
		n++
	}
	return sum / float64(n)
}

// Policies returns fresh instances of the three policies for trace tr. The
// fourth is the project's rule with scale-down-delay 0s, for reference. The
// HPA's per-replica threshold is tuned per trace so that at the trace's mean
// load it holds the same total backlog as the target: its best case.
func Policies(w World, tr Trace) []Policy {
	replicasAtMean := max(1, math.Ceil(meanRate(tr, w.Step)/w.ServiceRate))
	noDelay := NewMicroscaling(w)
	noDelay.Policy.ScaleDownDelay = 0
	noDelay.name = "microscaling-delay-0s"
	return []Policy{
		NewMicroscaling(w),
		&KEDAHPA{Threshold: float64(w.Target) / replicasAtMean, Max: w.Max},
		&Engine{Target: w.Target, Max: w.Max, MaxDelta: 5},
		// Not part of the verdict: shows what the scale-down delay costs.
		noDelay,
	}
}

// RunAll runs every policy on every trace.
func RunAll(w World, d time.Duration) [][]Result {
	var out [][]Result
	for _, tr := range Traces(d) {
		var row []Result
		for _, p := range Policies(w, tr) {
			row = append(row, Run(w, tr, p))
		}
		out = append(out, row)
	}
	return out
}
