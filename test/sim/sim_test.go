package sim

import (
	"strings"
	"testing"
	"time"
)

func TestSimulatorShortTraces(t *testing.T) {
	rows := RunAll(DefaultWorld, 4*time.Minute)
	byTrace := map[string][]Result{}
	for _, row := range rows {
		byTrace[row[0].Trace] = row
		if row[0].Policy != "microscaling" || row[1].Policy != "keda-hpa" || row[2].Policy != "engine-pd" {
			t.Fatalf("policies out of order: %s %s %s", row[0].Policy, row[1].Policy, row[2].Policy)
		}
	}
	for _, name := range []string{"step-up", "step-down", "ramp", "sine"} {
		t.Run(name, func(t *testing.T) {
			m, hpa := byTrace[name][0], byTrace[name][1]
			if m.MeanError >= hpa.MeanError {
				t.Errorf("mean error %.3f, not below the HPA's %.3f", m.MeanError, hpa.MeanError)
			}
			if m.ReplicaSeconds > 1.1*hpa.ReplicaSeconds {
				t.Errorf("replica-seconds %.0f, more than 1.1x the HPA's %.0f", m.ReplicaSeconds, hpa.ReplicaSeconds)
			}
		})
	}
	t.Run("quiet queue scales nothing up", func(t *testing.T) {
		for _, r := range byTrace["quiet"] {
			if r.PeakBacklog != 0 || r.ReplicaSeconds > 1 {
				t.Errorf("%s: peak %.0f, replica-seconds %.1f on a quiet queue", r.Policy, r.PeakBacklog, r.ReplicaSeconds)
			}
		}
	})
}

func TestRunIsDeterministic(t *testing.T) {
	a := Table(RunAll(DefaultWorld, time.Minute))
	b := Table(RunAll(DefaultWorld, time.Minute))
	if a != b {
		t.Errorf("two runs differ:\n%s\n%s", a, b)
	}
}

func TestSVG(t *testing.T) {
	row := RunAll(DefaultWorld, time.Minute)[0]
	svg := SVG(row, DefaultWorld.Target)
	for _, want := range []string{"<svg", "polyline", "microscaling", "keda-hpa", "engine-pd", "</svg>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}
