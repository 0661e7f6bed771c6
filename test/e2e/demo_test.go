package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// installDemo applies manifests/install and manifests/demo with kubectl and
// points the consumer at the harness's nsqd (kwok pods run no nsqd).
func installDemo(t *testing.T, s *harness.Stack) {
	t.Helper()
	for _, dir := range []string{"install", "demo"} {
		out, err := s.Kubectl(t.Context(), "apply", "-k", filepath.Join("..", "..", "manifests", dir))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl apply -k manifests/%s:\n%s", dir, out)
	}
	if _, err := s.Kubectl(t.Context(), "-n", "demo", "annotate", "deployment", "consumer", "--overwrite",
		fmt.Sprintf("microscaling.com/queue=nsq://%s/jobs/work", s.NSQ.HTTPAddr)); err != nil {
		t.Fatal(err)
	}
}

func demoReplicas(ctx context.Context, s *harness.Stack, name string) (int32, error) {
	d, err := s.Client.AppsV1().Deployments("demo").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	return *d.Spec.Replicas, nil
}

// TestInstallManifests: the controller, run as the ServiceAccount of
// manifests/install (not admin), scales the demo of manifests/demo; and that
// account can do no more than it needs.
func TestInstallManifests(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{
		{Name: "n1", CPU: "2", Memory: "8Gi"}, {Name: "n2", CPU: "2", Memory: "8Gi"}}})
	installDemo(t, s)
	kc, err := s.ServiceAccountKubeconfig("microscaling-system", "microscaling")
	if err != nil {
		t.Fatal(err)
	}
	startController(t, kc, "--leader-elect", "--leader-elect-lease-namespace=microscaling-system")

	// Spare room goes to the remainder, without Pending pods.
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		n, err := demoReplicas(ctx, s, "remainder")
		if err != nil || n == 0 {
			return fmt.Errorf("remainder replicas %d (%v), want > 0", n, err)
		}
		return nil
	})
	// A backlog makes the consumer grow.
	demoConsumerGrows(t, s, 500, 15*time.Second)
	// The installed identity writes each member's condition, which kubectl
	// describe shows.
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		out, err := s.Kubectl(ctx, "describe", "deployment", "consumer", "-n", "demo")
		if err != nil || !strings.Contains(out, "microscaling.com/Scaling") {
			return fmt.Errorf("kubectl describe shows no microscaling.com/Scaling condition (%v):\n%s", err, out)
		}
		return nil
	})
	as := "--as=system:serviceaccount:microscaling-system:microscaling"
	for _, tc := range []struct{ verb, want string }{
		{"get secrets -A", "no"},
		{"delete deployments -n demo", "no"},
		{"patch deployments -n demo", "no"},
		{"create pods -n demo", "no"},
		{"update deployments -n demo --subresource=scale", "yes"},
		{"patch deployments -n demo --subresource=status", "yes"},
		{"update deployments -n demo --subresource=status", "no"},
		{"watch pods -A", "yes"},
		{"watch endpointslices.discovery.k8s.io -n default", "yes"},
		{"list endpointslices.discovery.k8s.io -n demo", "no"},
	} {
		out := canI(t, s, as, tc.verb)
		if strings.TrimSpace(out) != tc.want {
			t.Errorf("can-i %s: %q, want %s", tc.verb, strings.TrimSpace(out), tc.want)
		}
	}
	// kubectl delete -k leaves nothing of either.
	for _, dir := range []string{"demo", "install"} {
		if out, err := s.Kubectl(t.Context(), "delete", "-k", filepath.Join("..", "..", "manifests", dir), "--wait=true"); err != nil {
			t.Fatalf("kubectl delete -k manifests/%s: %v\n%s", dir, err, out)
		}
	}
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		for _, kind := range []string{"namespace/microscaling-system", "namespace/demo", "clusterrole/microscaling", "clusterrolebinding/microscaling", "validatingadmissionpolicy/microscaling-annotations", "validatingadmissionpolicybinding/microscaling-annotations", "priorityclass/microscaling-remainder"} {
			if out, err := s.Kubectl(ctx, "get", kind, "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("%s still there (%v): %s", kind, err, out)
			}
		}
		return nil
	})
}

// TestDashboardInBrowser drives the dashboard in headless Chromium and checks
// that the plotted values are the controller's metrics.
func TestDashboardInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: install Debian's chromium (.ci/run does)")
	}
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "2", Memory: "8Gi"}}})
	installDemo(t, s)
	c := startController(t, s.Kubeconfig)
	// Steady state: the remainder has filled the room, and the last decision
	// of each member found what it asked for, so the page and the metrics
	// agree whichever tick each reads.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		for _, name := range []string{"consumer", "remainder"} {
			cur, err1 := c.metric(ctx, "microscaling_current_replicas", `deployment="`+name+`"`)
			want, err2 := c.metric(ctx, "microscaling_desired_replicas", `deployment="`+name+`"`)
			if err1 != nil || err2 != nil || cur != want || (name == "remainder" && cur == 0) {
				return fmt.Errorf("%s: current %v, desired %v (%v %v)", name, cur, want, err1, err2)
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url := "http://" + c.metrics + "/"
	profile := t.TempDir()
	common := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=" + profile,
		"--virtual-time-budget=4000", "--window-size=1000,900"}
	dom, err := exec.CommandContext(ctx, chromium, append(common, "--dump-dom", url)...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	if !strings.Contains(string(dom), `data-ready="true"`) {
		t.Fatalf("the page never rendered:\n%s", dom)
	}
	for _, name := range []string{"consumer", "remainder"} {
		re := regexp.MustCompile(`data-member="demo/` + name + `" data-replicas="(\d+)"`)
		m := re.FindStringSubmatch(string(dom))
		if m == nil {
			t.Fatalf("no row for %s in the page", name)
		}
		shown, err := strconv.Atoi(m[1])
		if err != nil {
			t.Fatalf("%s: replicas %q on the page: %v", name, m[1], err)
		}
		metric, err := c.metric(t.Context(), "microscaling_current_replicas", `deployment="`+name+`"`)
		if err != nil {
			t.Fatal(err)
		}
		if float64(shown) != metric {
			t.Errorf("%s: page shows %d replicas, metrics say %v", name, shown, metric)
		}
	}
	if m := regexp.MustCompile(`data-series="consumer backlog"`).FindString(string(dom)); m == "" {
		t.Errorf("no backlog line for the consumer in the chart")
	}
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if out, err := exec.CommandContext(ctx, chromium, append(common, "--screenshot="+shot, url)...).CombinedOutput(); err != nil {
		t.Fatalf("screenshot: %v\n%s", err, out)
	}
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 5000 {
		t.Errorf("screenshot %s: %v", shot, err)
	}
	if dst := os.Getenv("MICROSCALING_SCREENSHOT"); dst != "" {
		b, err := os.ReadFile(shot)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// demoConsumerGrows publishes n messages to the demo's queue and waits for
// its consumer to grow past one replica.
func demoConsumerGrows(t *testing.T, s *harness.Stack, n int, within time.Duration) {
	t.Helper()
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", n); err != nil {
		t.Fatal(err)
	}
	eventually(t, within, func(ctx context.Context) error {
		n, err := demoReplicas(ctx, s, "consumer")
		if err != nil || n < 2 {
			return fmt.Errorf("consumer replicas %d (%v), want > 1", n, err)
		}
		return nil
	})
}
