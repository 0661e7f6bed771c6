package manifests

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

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
		{name: "label-sync", set: []string{"labelSync.enabled=true", "labelSync.platform=linux/arm64"}},
		{name: "single-dry-run", set: []string{"replicaCount=1", "controller.leaderElect=false", "controller.dryRun=true", "controller.watchNamespace=team-a", "controller.interval=500ms"}},
	}
	helm := tool(t, "helm-*")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "microscaling", "helm/microscaling", "--namespace", "microscaling-system"}
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			golden(t, "helm-"+tc.name+".yaml", run(t, helm, args...))
		})
	}
}

func TestKustomize(t *testing.T) {
	kubectl := tool(t, "kubectl")
	for _, dir := range []string{"install", "demo", "sync-labels"} {
		t.Run(dir, func(t *testing.T) {
			golden(t, "kustomize-"+dir+".yaml", run(t, kubectl, "kustomize", dir))
		})
	}
}
