package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

func waitLeader(t *testing.T, c *controller, want float64, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func(ctx context.Context) error {
		v, err := c.metric(ctx, "microscaling_leader")
		if err != nil || v != want {
			return fmt.Errorf("microscaling_leader %v (%v), want %v", v, err, want)
		}
		return nil
	})
}

// Scenario 7: with --leader-elect only the leader writes; SIGKILL hands over
// within the lease, the handover changes no replicas, and scaling resumes.
func TestLeaderElectionHandover(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	ensureChannel(t, s, "jobs", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work",
		"target-queue-length", "10", "max-replicas", "8", "scale-down-delay", "0s")))
	args := []string{"--leader-elect", "--leader-elect-lease-namespace=default"}
	a := startController(t, s.Kubeconfig, append(args, "--leader-elect-identity=a")...)
	waitLeader(t, a, 1, 20*time.Second)
	b := startController(t, s.Kubeconfig, append(args, "--leader-elect-identity=b")...)
	waitLeader(t, b, 0, 5*time.Second)

	// No consumers: the backlog stays, and the leader holds the max.
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 500); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "8", func(n int32) bool { return n == 8 })
	if ops := mustMetric(t, a, "microscaling_scale_operations_total", `result="ok"`); ops == 0 {
		t.Errorf("leader a made no writes")
	}
	if ops := mustMetric(t, b, "microscaling_scale_operations_total"); ops != 0 {
		t.Errorf("standby b wrote %v times", ops)
	}

	a.kill()
	killed := time.Now()
	// Until b leads, and right after, the replicas stay as they were.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := replicas(ctx, s, "default", "consumer")
		if err != nil {
			return err
		}
		if n != 8 {
			t.Fatalf("replicas changed to %d during the handover", n)
		}
		v, err := b.metric(ctx, "microscaling_leader")
		if err != nil || v != 1 {
			return fmt.Errorf("b not leader yet (%v, %v)", v, err)
		}
		return nil
	})
	t.Logf("b took over %s after a was killed", time.Since(killed).Round(100*time.Millisecond))
	if n := mustReplicas(t, s, "default", "consumer"); n != 8 {
		t.Errorf("replicas %d after the handover, want 8", n)
	}
	// Scaling resumes under b: the queue is emptied and it shrinks to 0.
	req := mustRequest(t, t.Context(), http.MethodPost, "http://"+s.NSQ.HTTPAddr+"/channel/empty?topic=jobs&channel=work")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitReplicas(t, s, "default", "consumer", 10*time.Second, "0", func(n int32) bool { return n == 0 })
	if ops := mustMetric(t, b, "microscaling_scale_operations_total", `result="ok"`); ops == 0 {
		t.Errorf("new leader b made no writes")
	}
}

// TestNoSecondController: while an elected controller holds the Lease, the
// command line never starts another. Run as kubectl runs a plugin
// (kubectl microscaling ..., $KUBECONFIG): no arguments, or flags with no
// command, print help; an unknown command and a stray word are usage
// mistakes (exit 2); a flag before the command runs that command; a
// controller without election refuses to run (exit 1) naming the holder.
// None of them says "starting", and the API server's audit log shows that
// none of them asked it anything a controller asks: the help asks nothing
// at all, status lists Deployments in its namespace and nothing else.
func TestNoSecondController(t *testing.T) {
	s := harness.StartT(t, harness.Options{Audit: true})
	startController(t, s.Kubeconfig, "--leader-elect", "--leader-elect-lease-namespace=default", "--leader-elect-identity=installed")
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		l, err := s.Client.CoordinationV1().Leases("default").Get(ctx, "microscaling", metav1.GetOptions{})
		if err == nil && (l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "installed") {
			err = errors.New("the Lease is not held yet")
		}
		return err
	})
	// A person who may read Deployments in default, with a client
	// certificate: every request of theirs in the audit log is this test's.
	kc, err := s.CertKubeconfig("dana")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.Kubectl(t.Context(), "create", "rolebinding", "dana-view", "-n", "default", "--clusterrole=view", "--user=dana"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, c := range []struct {
		name string
		kc   string // $KUBECONFIG
		args []string
		code int
		says string
	}{
		{"no arguments", kc, nil, 0, "Available Commands"},
		{"flags and no command", kc, []string{"--kubeconfig", kc, "-n", "default"}, 0, "Available Commands"},
		{"an unknown command", kc, []string{"--kubeconfig", kc, "stauts"}, 2, `unknown command "stauts"`},
		{"a flag before the command", kc, []string{"--kubeconfig", kc, "status"}, 0, "no managed Deployments here"},
		{"a stray word after the flags", kc, []string{"controller", "--kubeconfig", kc, "status"}, 2, `unexpected argument "status"`},
		{"a controller without election", s.Kubeconfig, []string{"controller", "--leader-elect-lease-namespace=default", "--metrics-addr="}, 1,
			"the Lease default/microscaling is held by installed"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "kubectl"), append([]string{"microscaling"}, c.args...)...)
		cmd.Env = append(os.Environ(), "PATH="+pluginPath(t)+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+c.kc)
		out, err := cmd.CombinedOutput()
		cancel()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if code != c.code || !strings.Contains(string(out), c.says) || strings.Contains(string(out), `"starting"`) {
			t.Errorf("%s: exit %d, output %q; want exit %d saying %q and no controller starting", c.name, code, tail(string(out), 600), c.code, c.says)
		}
	}
	events, err := s.Audit()
	if err != nil {
		t.Fatal(err)
	}
	var dana []string
	for _, e := range events {
		if e.User.Username == "dana" {
			dana = append(dana, e.Verb+" "+e.RequestURI)
		}
	}
	// status, once: one list of default's Deployments, and nothing else
	// (no watch, no Lease, no /scale, no Events).
	if len(dana) != 1 || !strings.HasPrefix(dana[0], "list /apis/apps/v1/namespaces/default/deployments") {
		t.Errorf("dana's requests in the audit log: %q; want only status's one list of default's Deployments", dana)
	}
}

// pluginPath is a directory holding kubectl-microscaling, the binary under
// test, as a person installs the plugin.
func pluginPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(controllerBin, filepath.Join(dir, "kubectl-microscaling")); err != nil {
		t.Fatal(err)
	}
	return dir
}
