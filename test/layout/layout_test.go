// Package layout checks that dependencies flow one way through the
// packages: the policy is pure, the cluster adapter never imports the loop,
// and the controller's binary carries nothing of the tests or the demo.
package layout

import (
	"os/exec"
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
