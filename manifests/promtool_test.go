package manifests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The chart's alerting rules, and every query of the Grafana dashboard,
// pass Prometheus's own rule checker (promtool, built from the prometheus
// module like the other test binaries): PromQL that parses, rules that
// Prometheus would load. That the series they query exist is checked
// against the real binary's /metrics in test/e2e.
func TestRulesAndDashboardPassPromtool(t *testing.T) {
	helm, promtool := tool(t, "helm-*"), tool(t, "promtool-*")
	out := run(t, helm, "template", "microscaling", "helm/microscaling", "--namespace", "microscaling-system", "--kube-version", kubeVersion,
		"--set", "prometheusRule.enabled=true", "--show-only", "templates/monitoring.yaml")
	var rule struct {
		Kind string
		Spec struct {
			Groups []any `json:"groups"`
		}
	}
	if err := yaml.Unmarshal(out, &rule); err != nil || rule.Kind != "PrometheusRule" || len(rule.Spec.Groups) == 0 {
		t.Fatalf("the chart's PrometheusRule: kind %q, %d groups, %v", rule.Kind, len(rule.Spec.Groups), err)
	}

	// Each dashboard query as a recording rule, Grafana's variables given
	// values as Grafana would.
	b, err := os.ReadFile(filepath.Join("grafana", "microscaling.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$namespace", "team-a", "$group", "jobs", "$__rate_interval", "1m", "$__interval", "30s")
	var recording []map[string]string
	for i, p := range dash.Panels {
		for j, tg := range p.Targets {
			recording = append(recording, map[string]string{"record": fmt.Sprintf("dashboard:panel%d_target%d", i, j), "expr": vars.Replace(tg.Expr)})
		}
	}
	if len(recording) < 5 {
		t.Fatalf("only %d dashboard queries", len(recording))
	}
	groups := append(rule.Spec.Groups, map[string]any{"name": "dashboard", "rules": recording})
	file := filepath.Join(t.TempDir(), "rules.yaml")
	y, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, y, 0o644); err != nil {
		t.Fatal(err)
	}
	got := string(run(t, promtool, "check", "rules", file))
	if !strings.Contains(got, "SUCCESS") {
		t.Errorf("promtool check rules:\n%s", got)
	}
	t.Logf("promtool check rules (%d alerting groups, %d dashboard queries):\n%s", len(rule.Spec.Groups), len(recording), got)
}

// Every alert of the chart fires on what it exists for and stays quiet
// otherwise: promtool's unit tests (testdata/alerts.promtest.yaml) against
// the rules the chart renders, and every alert has a test.
func TestAlertsFire(t *testing.T) {
	helm, promtool := tool(t, "helm-*"), tool(t, "promtool-*")
	out := run(t, helm, "template", "microscaling", "helm/microscaling", "--namespace", "microscaling-system", "--kube-version", kubeVersion,
		"--set", "prometheusRule.enabled=true", "--show-only", "templates/monitoring.yaml")
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert string }
			}
		}
	}
	if err := yaml.Unmarshal(out, &rule); err != nil {
		t.Fatal(err)
	}
	var spec any
	if err := yaml.Unmarshal(out, &spec); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	groups, err := yaml.Marshal(map[string]any{"groups": spec.(map[string]any)["spec"].(map[string]any)["groups"]})
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join("testdata", "alerts.promtest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"rules.yaml": groups, "alerts.promtest.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no promtool test in testdata/alerts.promtest.yaml", r.Alert)
			}
		}
	}
	got := string(run(t, promtool, "test", "rules", filepath.Join(dir, "alerts.promtest.yaml")))
	t.Logf("promtool test rules:\n%s", got)
}
