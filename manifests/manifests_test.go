package manifests

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/microscaling/microscaling/test/harness"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func tool(t *testing.T, glob string) string {
	t.Helper()
	bin, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	m, err := filepath.Glob(filepath.Join(bin, glob))
	if err != nil || len(m) == 0 {
		t.Fatalf("no %s in %s", glob, bin)
	}
	return m[0]
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s%s", filepath.Base(name), args, err, out.Bytes(), errb.Bytes())
	}
	return out.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./manifests -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file; if the change is meant, run go test ./manifests -update and review the diff\n--- got ---\n%s", path, got)
	}
}

func TestHelmLint(t *testing.T) {
	out := run(t, tool(t, "helm-*"), "lint", "--strict", "helm/microscaling")
	if !bytes.Contains(out, []byte("0 chart(s) failed")) {
		t.Errorf("helm lint: %s", out)
	}
}

func TestHelmTemplate(t *testing.T) {
	tests := []struct {
		name string
		set  []string
	}{
		{name: "default"},
		{name: "queue-secrets", set: []string{"queueSecrets.enabled=true"}},
		{name: "idle-first", set: []string{"idleFirst.enabled=true"}},
		{name: "shards", set: []string{"shards=3"}},
		{name: "label-sync", set: []string{"labelSync.enabled=true", "labelSync.platform=linux/arm64", "labelSync.keys=priority\\,rule\\,group"}},
		{name: "single-dry-run", set: []string{"replicaCount=1", "controller.leaderElect=false", "controller.dryRun=true", "controller.watchNamespace=team-a", "controller.interval=500ms", "controller.queueAllow=10.0.0.0/8\\,.svc.cluster.local",
			"metrics.auth=none", "statusAccess.groups=null"}},
		{name: "everything", set: []string{"replicaCount=3", "priorityClassName=system-cluster-critical",
			"podAnnotations.team=platform", "podLabels.tier=control", "serviceAccount.annotations.iam=role-a", "serviceAccount.labels.audit=yes",
			"extraArgs[0]=--profiling", "env[0].name=TZ", "env[0].value=UTC", "resources.limits.memory=512Mi",
			"topologySpreadConstraints[0].maxSkew=1", "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname", "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
			"topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=microscaling",
			"image.repository=registry.example/team/microscaling", "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			"podSecurityContext.runAsUser=1000", "serviceMonitor.enabled=true", "prometheusRule.enabled=true",
			"networkPolicy.enabled=true", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
			"metrics.readers[0].kind=ServiceAccount", "metrics.readers[0].name=prometheus-k8s", "metrics.readers[0].namespace=monitoring"}},
	}
	helm := tool(t, "helm-*")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "microscaling", "helm/microscaling", "--namespace", "microscaling-system", "--kube-version", kubeVersion}
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			golden(t, "helm-"+tc.name+".yaml", run(t, helm, args...))
		})
	}
}

func TestKustomize(t *testing.T) {
	kubectl := tool(t, "kubectl")
	for _, dir := range []string{"install", "queue-secrets", "idle-first", "demo", "sync-labels"} {
		t.Run(dir, func(t *testing.T) {
			golden(t, "kustomize-"+strings.ReplaceAll(dir, "/", "-")+".yaml", run(t, kubectl, "kustomize", dir))
		})
	}
}

// The release is written once, in VERSION; the chart and the kustomize
// image tags must say the same.
func TestVersionsAgree(t *testing.T) {
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	version := strings.TrimSpace(string(read("VERSION")))
	if version == "" {
		t.Fatal("VERSION is empty")
	}
	var chart struct{ Version, AppVersion string }
	if err := yaml.Unmarshal(read("helm/microscaling/Chart.yaml"), &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion != version || chart.Version != version {
		t.Errorf("Chart.yaml version %q, appVersion %q; VERSION says %q", chart.Version, chart.AppVersion, version)
	}
	for _, dir := range []string{"install", "demo"} {
		var k struct {
			Images []struct{ Name, NewTag string } `json:"images"`
		}
		if err := yaml.Unmarshal(read(filepath.Join(dir, "kustomization.yaml")), &k); err != nil {
			t.Fatal(err)
		}
		if len(k.Images) == 0 {
			t.Errorf("%s/kustomization.yaml sets no image tag", dir)
		}
		for _, img := range k.Images {
			if img.NewTag != version {
				t.Errorf("%s/kustomization.yaml tags %s %q; VERSION says %q", dir, img.Name, img.NewTag, version)
			}
		}
	}
}

// A wrong value fails at template time with a message naming it.
func TestHelmRefusesBadValues(t *testing.T) {
	helm := tool(t, "helm-*")
	tests := []struct{ set, want string }{
		{"controller.interval=fast", "/controller/interval"},
		{"replicaCount=-1", "/replicaCount"},
		{"controller.workers=0", "/controller/workers"},
		{"bogus=1", "'bogus' not allowed"},
		{"image.pullPolicy=Sometimes", "/image/pullPolicy"},
		{"image.digest=latest", "/image/digest"},
		{"metrics.port=70000", "/metrics/port"},
		{"replicaCount=2,controller.leaderElect=false", "replicaCount > 1 needs controller.leaderElect=true"},
		{"shards=0", "/shards"},
		{"shards=65", "/shards"},
		{"shards=2,replicaCount=1,controller.leaderElect=false", "shards > 1 needs controller.leaderElect=true"},
	}
	for _, tc := range tests {
		t.Run(tc.set, func(t *testing.T) {
			cmd := exec.Command(helm, "template", "x", "helm/microscaling", "--kube-version", kubeVersion, "--set", tc.set)
			cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Errorf("helm template --set %s: %v, output %q; want a failure saying %q", tc.set, err, out, tc.want)
			}
		})
	}
}

// kubeVersion is the Kubernetes version the chart is rendered for in
// tests: helm template assumes v1.20 otherwise, below the chart's
// kubeVersion (ValidatingAdmissionPolicy is GA from 1.30).
const kubeVersion = "1.30.0"

// The chart and kustomize install the same admission policy.
func TestAdmissionPolicyOnce(t *testing.T) {
	a, err := os.ReadFile("install/admission-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("helm/microscaling/files/admission-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("install/admission-policy.yaml and helm/microscaling/files/admission-policy.yaml differ: keep them the same")
	}
}
