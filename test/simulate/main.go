// Command simulate runs the queue simulator (package sim): this project's
// decision, the HPA as KEDA drives it, and the original engine, side by side
// on the same traces. It prints the table, writes one SVG per trace, and
// rewrites the simulator section of BENCHMARKS.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/microscaling/microscaling/test/sim"
)

const (
	begin = "<!-- simulator:begin -->"
	end   = "<!-- simulator:end -->"
)

func main() {
	var (
		duration = flag.Duration("duration", 15*time.Minute, "length of each trace")
		svgDir   = flag.String("svg-dir", "docs/sim", "where to write one SVG per trace")
		bench    = flag.String("benchmarks", "BENCHMARKS.md", "file whose simulator section is rewritten; empty: none")
	)
	flag.Parse()
	if err := run(*duration, *svgDir, *bench); err != nil {
		fmt.Fprintln(os.Stderr, "simulate:", err)
		os.Exit(1)
	}
}

func run(d time.Duration, svgDir, bench string) error {
	w := sim.DefaultWorld
	rows := sim.RunAll(w, d)
	if err := os.MkdirAll(svgDir, 0o755); err != nil {
		return fmt.Errorf("making %s: %w", svgDir, err)
	}
	var verdicts strings.Builder
	for _, row := range rows {
		path := filepath.Join(svgDir, row[0].Trace+".svg")
		if err := os.WriteFile(path, []byte(sim.SVG(row, w.Target)), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		ok, why := sim.Verdict(row)
		status := "goal met"
		if !ok {
			status = "goal missed: " + why
		}
		fmt.Fprintf(&verdicts, "- %s: %s ([plot](%s))\n", row[0].Trace, status, filepath.ToSlash(path))
	}
	section := fmt.Sprintf("%s\nCommand: `make simulate` (`go run ./test/simulate -duration %s`). World: target %d messages, "+
		"%.0f msg/s per ready replica, %s start delay, max %d replicas, %s step; every policy starts at 1 replica and an empty queue.\n\n%s\n%s%s",
		begin, d, w.Target, w.ServiceRate, w.StartDelay, w.Max, w.Step, sim.Table(rows), verdicts.String(), end)
	fmt.Println(section)
	if bench == "" {
		return nil
	}
	old, err := os.ReadFile(bench)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading %s: %w", bench, err)
	}
	s := string(old)
	if i, j := strings.Index(s, begin), strings.Index(s, end); i >= 0 && j > i {
		s = s[:i] + section + s[j+len(end):]
	} else {
		s += "\n## Simulator: microscaling vs KEDA/HPA vs the original engine\n\n" + section + "\n"
	}
	return os.WriteFile(bench, []byte(s), 0o644)
}
