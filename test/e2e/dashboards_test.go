package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/microscaling/microscaling/test/harness"
)

var (
	metricName = regexp.MustCompile(`microscaling_[a-z_]+`)
	selector   = regexp.MustCompile(`(microscaling_[a-z_]+)\{([^}]*)\}`)
	grouping   = regexp.MustCompile(`\b(?:by|on|group_left)\s*\(([^)]*)\)`)
	labelName  = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)`)
)

// Every series the Grafana dashboard and the chart's alerts query exists in
// the real controller's /metrics, with the labels they select and group by,
// in a cluster where each state a gauge reports (paused, invalid, queue
// unreadable, another autoscaler) occurs.
func TestDashboardsAndAlertsQueryRealMetrics(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	// An empty queue takes the consumer from 1 to its min at once: a write.
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "3", "scale-down-delay", "0s")))
	create(t, s, deployment("default", "paused", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "3", "paused", "true")))
	create(t, s, deployment("default", "invalid", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "lots")))
	create(t, s, deployment("default", "unreadable", 1, map[string]string{"microscaling.com/queue": "nsq://127.0.0.1:1/jobs/work",
		"microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "3"}))
	create(t, s, deployment("default", "hpa", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "max-replicas", "3")))
	one := int32(1)
	if _, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers("default").Create(t.Context(), &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "hpa", Namespace: "default"},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: &one, MaxReplicas: 1,
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "hpa"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := startController(t, s.Kubeconfig)

	var queries []string
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests", "grafana", "microscaling.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the Grafana dashboard is not JSON: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries = append(queries, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok && strings.Contains(q, "microscaling_") {
			queries = append(queries, q)
		}
	}
	helmBins, err := filepath.Glob(filepath.Join(s.Bin, "helm-*"))
	if err != nil || len(helmBins) == 0 {
		t.Fatalf("no helm in %s", s.Bin)
	}
	cmd := exec.Command(helmBins[0], "template", "x", "manifests/helm/microscaling", "--kube-version", chartKubeVersion, "--set", "prometheusRule.enabled=true", "--show-only", "templates/monitoring.yaml")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert, Expr string }
			}
		}
	}
	if err := yaml.Unmarshal(out, &rule); err != nil {
		t.Fatal(err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			queries = append(queries, r.Expr)
		}
	}
	if len(queries) < 15 {
		t.Fatalf("only %d queries found in the dashboard and the rules", len(queries))
	}

	var exposition string
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		body, err := c.get(ctx, "/metrics")
		if err != nil {
			return err
		}
		exposition = body
		for _, want := range []string{"microscaling_member_paused{", "microscaling_annotations_invalid{", "microscaling_queue_unreadable{",
			"microscaling_conflicting_autoscaler{", "microscaling_queue_read_duration_seconds_bucket{", "microscaling_scale_operations_total{"} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("no %s series yet", strings.TrimSuffix(want, "{"))
			}
		}
		return nil
	})
	labelsOf := map[string]map[string]bool{} // metric -> label names seen on its samples
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if !strings.HasPrefix(name, "microscaling_") {
			continue
		}
		if labelsOf[name] == nil {
			labelsOf[name] = map[string]bool{}
		}
		for _, m := range labelName.FindAllStringSubmatch(rest[:max(strings.Index(rest, "}"), 0)], -1) {
			labelsOf[name][m[1]] = true
		}
		// The scrape adds the target's labels to series that lack them (the
		// chart's ServiceMonitor honors the series' own).
		for _, l := range []string{"namespace", "pod", "instance", "job", "service"} {
			if !strings.Contains(rest, l+"=") {
				labelsOf[name][l] = true
			}
		}
	}
	for _, q := range queries {
		q = strings.ReplaceAll(q, "$namespace", "x")
		for _, name := range metricName.FindAllString(q, -1) {
			if labelsOf[name] == nil && labelsOf[name+"_bucket"] == nil {
				t.Errorf("%q queries %s, which the controller does not expose", q, name)
			}
		}
		for _, m := range selector.FindAllStringSubmatch(q, -1) {
			for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
				if !labelsOf[m[1]][l[1]] {
					t.Errorf("%q selects %s by %q, a label it does not have", q, m[1], l[1])
				}
			}
		}
		for _, g := range grouping.FindAllStringSubmatch(q, -1) {
			for _, l := range strings.Split(g[1], ",") {
				l = strings.TrimSpace(l)
				found := l == "" || l == "le"
				for _, name := range metricName.FindAllString(q, -1) {
					found = found || labelsOf[name][l] || labelsOf[name+"_bucket"][l]
				}
				if !found {
					t.Errorf("%q groups or joins by %q, which none of its series has", q, l)
				}
			}
		}
	}
}
