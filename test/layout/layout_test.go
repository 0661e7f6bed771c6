// Package layout checks that dependencies flow one way through the
// packages: the policy is pure, the cluster adapter never imports the loop,
// the executor is the loop's one writer, and the controller's binary
// carries nothing of the tests or the demo.
package layout

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/microscaling/microscaling"

func TestDependenciesFlowOneWay(t *testing.T) {
	tests := []struct {
		pkg       string
		forbidden func(dep string) bool
		why       string
	}{
		{"./scaler/policy", func(d string) bool {
			return strings.HasPrefix(d, "k8s.io/client-go") || (strings.HasPrefix(d, module) && d != module+"/scaler/policy" && d != module+"/annotations")
		}, "the policy is pure: no client, nothing of the project but annotations"},
		{"./informer", func(d string) bool {
			return strings.HasPrefix(d, module+"/scaler") && d != module+"/scaler/policy"
		}, "the cluster adapter uses the policy's types, never the loop"},
		{".", func(d string) bool { return strings.HasPrefix(d, module+"/test/") || d == "github.com/nsqio/go-nsq" },
			"the controller's binary carries no test or demo code"},
		{"./scaler/queue/...", func(d string) bool { return d == module+"/scaler" }, "the queue sources do not know the loop"},
		{"./scaler", func(d string) bool { return strings.HasPrefix(d, module+"/scaler/queue/") }, "the loop knows the Source interface, never a source"},
		{"./scaler/egress", func(d string) bool { return strings.HasPrefix(d, module+"/") && d != module+"/scaler/egress" }, "the egress rule stands alone: queue reads and label sync share it"},
	}
	for _, tc := range tests {
		t.Run(tc.pkg, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", tc.pkg)
			cmd.Dir = "../.."
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", tc.pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 5 {
				t.Fatalf("go list -deps %s listed only %v", tc.pkg, deps)
			}
			for _, d := range deps {
				if tc.forbidden(d) {
					t.Errorf("%s imports %s: %s", tc.pkg, d, tc.why)
				}
			}
		})
	}
}

// TestOwnImports checks what packages import themselves (not through
// another package of the project).
func TestOwnImports(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, ":")
		imports[strings.TrimPrefix(pkg, module)] = strings.Fields(deps)
	}
	if len(imports["/scaler/policy"]) == 0 || len(imports["/scaler/execute"]) == 0 {
		t.Fatalf("go list did not list scaler/policy and scaler/execute: %v", imports)
	}
	for _, d := range imports["/scaler/policy"] {
		if strings.HasPrefix(d, "k8s.io/") {
			t.Errorf("scaler/policy imports %s: the policy imports annotations and the standard library only", d)
		}
	}
	if len(imports["/scaler"]) == 0 {
		t.Fatalf("go list did not list scaler: %v", imports)
	}
	for _, d := range imports["/scaler"] {
		if d == "k8s.io/api/apps/v1" {
			t.Errorf("scaler imports %s: the loop takes the informer's plain snapshot, never a Deployment", d)
		}
	}
	for pkg, deps := range imports {
		if !strings.HasPrefix(pkg, "/scaler") || pkg == "/scaler/execute" {
			continue
		}
		for _, d := range deps {
			if d == "k8s.io/client-go/tools/record" {
				t.Errorf("%s imports %s: the executor is the only one that records Events for members", pkg, d)
			}
		}
	}
}

// TestOneScaleWriter checks that the executor is the only code of the
// controller that writes /scale.
func TestOneScaleWriter(t *testing.T) {
	root := "../.."
	found := 0
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if e.IsDir() && (rel == "test" || strings.HasPrefix(e.Name(), ".")) && rel != "." {
			return filepath.SkipDir
		}
		if e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), "UpdateScale(") {
			found++
			if filepath.Dir(rel) != filepath.Join("scaler", "execute") {
				t.Errorf("%s writes /scale: only scaler/execute does", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Error("no file writes /scale: the check looks in the wrong place")
	}
}
