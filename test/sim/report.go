package sim

import (
	"fmt"
	"math"
	"strings"
)

// Table renders results as a Markdown table.
func Table(rows [][]Result) string {
	var b strings.Builder
	b.WriteString("| trace | policy | mean abs(backlog-target)/target | peak backlog | replica-seconds | vs HPA | scale ops | reversals | reversals in 2nd half |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range rows {
		hpa := row[1].ReplicaSeconds
		for _, r := range row {
			ratio := "-"
			if hpa > 0 {
				ratio = fmt.Sprintf("%.2fx", r.ReplicaSeconds/hpa)
			}
			fmt.Fprintf(&b, "| %s | %s | %.3f | %.0f | %.0f | %s | %d | %d | %d |\n",
				r.Trace, r.Policy, r.MeanError, r.PeakBacklog, r.ReplicaSeconds, ratio, r.ScaleOps, r.Reversals, r.LateReversals)
		}
	}
	return b.String()
}

// Verdict says, per trace, whether microscaling (row[0]) met the goal: lower
// mean error than both baselines at no more than 1.1x the HPA's
// replica-seconds.
func Verdict(row []Result) (ok bool, why string) {
	m, hpa, eng := row[0], row[1], row[2]
	if m.PeakBacklog == 0 && hpa.PeakBacklog == 0 && eng.PeakBacklog == 0 {
		return true, "" // a quiet queue: nothing to hold, all tie
	}
	var misses []string
	if m.MeanError >= hpa.MeanError || m.MeanError >= eng.MeanError {
		misses = append(misses, fmt.Sprintf("mean error %.3f vs HPA %.3f, engine %.3f", m.MeanError, hpa.MeanError, eng.MeanError))
	}
	if m.ReplicaSeconds > 1.1*hpa.ReplicaSeconds {
		misses = append(misses, fmt.Sprintf("replica-seconds %.2fx the HPA's", m.ReplicaSeconds/hpa.ReplicaSeconds))
	}
	return len(misses) == 0, strings.Join(misses, "; ")
}

var colors = []string{"#1f77b4", "#d62728", "#2ca02c"}

// SVG draws one trace: backlog (with the target) on top, replicas below,
// one line per policy.
func SVG(row []Result, target int64) string {
	const w, h, pad = 900, 520, 50
	panelH := (h - 3*pad) / 2
	maxT, maxB, maxR := 1.0, float64(target)*2, 1.0
	for _, r := range row {
		for _, p := range r.Points {
			maxT = math.Max(maxT, p.T.Seconds())
			maxB = math.Max(maxB, p.Backlog)
			maxR = math.Max(maxR, float64(p.Replicas))
		}
	}
	x := func(s float64) float64 { return pad + s/maxT*(w-2*pad) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="20" font-size="15">%s</text>`+"\n", pad, row[0].Trace)
	panel := func(top int, label string, maxV float64, value func(Point) float64) {
		y := func(v float64) float64 { return float64(top+panelH) - v/maxV*float64(panelH) }
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", pad, top, w-2*pad, panelH)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (max %.0f)</text>`+"\n", pad, top-5, label, maxV)
		for i, r := range row[:3] {
			var pts []string
			for _, p := range r.Points {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.T.Seconds()), y(value(p))))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.3" points="%s"/>`+"\n", colors[i%len(colors)], strings.Join(pts, " "))
		}
		if label == "backlog" {
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#000" stroke-dasharray="4 3"/>`+"\n", pad, w-pad, y(float64(target)), y(float64(target)))
		}
	}
	panel(pad+10, "backlog", maxB, func(p Point) float64 { return p.Backlog })
	panel(2*pad+panelH+10, "replicas", maxR, func(p Point) float64 { return float64(p.Replicas) })
	for i, r := range row[:3] {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", pad+200+i*150, 20, colors[i%len(colors)], r.Policy)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d">time (s), 0 to %.0f; dashed: target</text>`+"\n", pad, h-10, maxT)
	b.WriteString("</svg>\n")
	return b.String()
}
