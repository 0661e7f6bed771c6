package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// The Lease is released only after the work has returned: a decision still
// in flight when the process is told to stop never overlaps another
// TestMain lets every execute apply the logging flags again, as one
// process applies them once.
func TestMain(m *testing.M) {
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	os.Exit(m.Run())
}

// replica's.
func TestLeaseReleasedAfterWork(t *testing.T) {
	client := fake.NewClientset()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "microscaling", Namespace: "ms"},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: "me"},
	}
	holder := func() (string, error) {
		l, err := client.CoordinationV1().Leases("ms").Get(context.Background(), "microscaling", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil {
			return "", nil
		}
		return *l.Spec.HolderIdentity, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started, stopping, finish := make(chan struct{}), make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- lead(ctx, lock, "microscaling", "me", func(ctx context.Context) {
			close(started)
			<-ctx.Done()
			close(stopping)
			<-finish // a write still in flight
		}, nil)
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("never led")
	}
	if h, err := holder(); err != nil || h != "me" {
		t.Fatalf("leading, but the Lease's holder is %q (%v)", h, err)
	}
	cancel()
	<-stopping
	// While the work is still running, the Lease stays held.
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, time.Second, true, func(context.Context) (bool, error) {
		h, err := holder()
		return err != nil || h != "me", err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		h, herr := holder()
		t.Fatalf("the Lease was released (holder %q, %v) while the work was still in flight: %v", h, herr, err)
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("lead: %v", err)
	}
	if h, err := holder(); err != nil || h != "" {
		t.Errorf("after the work returned: holder %q (%v), want released", h, err)
	}
}

// /healthz fails while leading when no tick finished for three intervals;
// a standby is healthy.
func TestHealthz(t *testing.T) {
	h := &health{interval: time.Second}
	now := time.Now()
	if err := h.check(now); err != nil {
		t.Errorf("standby: %v", err)
	}
	last := now
	h.lead(true, func() time.Time { return last })
	if err := h.check(now.Add(2 * time.Second)); err != nil {
		t.Errorf("2 s after a tick: %v", err)
	}
	if err := h.check(now.Add(4 * time.Second)); err == nil {
		t.Error("4 s after the last tick at a 1 s interval: healthy, want an error")
	}
	last = now.Add(4 * time.Second)
	if err := h.check(now.Add(5 * time.Second)); err != nil {
		t.Errorf("ticking again: %v", err)
	}
	h.lead(false, nil)
	if err := h.check(now.Add(time.Hour)); err != nil {
		t.Errorf("no longer leading: %v", err)
	}
}

// validate checks manifests with the controller's parser and messages, and
// reports whether any was wrong; an unreadable stream or no input is an error.
func TestValidate(t *testing.T) {
	bad := `apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: c
    namespace: t
    annotations:
      microscaling.com/queue: "nsq://h:4151/t/c"
      microscaling.com/max-replica: "3"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: x, annotations: {microscaling.com/rule: remainder}}
`
	unread := `apiVersion: apps/v1
kind: Deployment
metadata: {name: pods, namespace: t}
spec:
  template:
    metadata:
      annotations: {microscaling.com/queue: "nsq://h:4151/t/c", microscaling.com/max-replicas: "3"}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: unmanaged
  namespace: t
  annotations: {microscaling.com/max-replicas: "3", microscaling.com/target-queue-length: "10"}
`
	tests := []struct {
		name    string
		args    []string
		stdin   string
		bad     bool
		err     string
		code    int // the exit code for err
		outputs []string
	}{
		{name: "the repo's own manifests pass", args: []string{"-f", "manifests/install", "-f", "manifests/demo", "-f", "manifests/testdata/helm-everything.yaml"},
			outputs: []string{"2 objects with microscaling.com/ annotations checked, 0 problems"}},
		{name: "mistakes in a List on stdin, every one named", args: []string{"-f", "-"}, stdin: bad, bad: true, outputs: []string{
			`-: Deployment t/c: microscaling.com/max-replica="3": unknown key (did you mean microscaling.com/max-replicas?)`,
			`-: Deployment t/c: microscaling.com/max-replicas="": required`,
			"-: ConfigMap x: microscaling.com/* annotations act only on apps/v1 Deployments",
			"2 objects with microscaling.com/ annotations checked, 4 problems"}},
		{name: "annotations on the pod template, and a Deployment neither queue nor rule", args: []string{"-f", "-"}, stdin: unread, bad: true, outputs: []string{
			"-: Deployment t/pods: microscaling.com/* annotations on the pod template (spec.template.metadata.annotations) are not read",
			"-: Deployment t/unmanaged: microscaling.com/* annotations without microscaling.com/queue or microscaling.com/rule: the Deployment is not managed",
			"2 objects with microscaling.com/ annotations checked, 2 problems"}},
		{name: "no input", err: "no input", code: 2},
		{name: "an unknown flag", args: []string{"-x"}, err: "unknown shorthand flag", code: 2},
		{name: "a stray argument", args: []string{"-f", "-", "deploy.yaml"}, err: "unexpected argument", code: 2},
		{name: "help", args: []string{"-h"}, err: "validate -f FILE|DIR|-", code: 0},
		{name: "broken YAML", args: []string{"-f", "-"}, stdin: "kind: [", err: "reading manifests", code: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut strings.Builder
			code := runCommand(t.Context(), append([]string{"validate"}, tc.args...), strings.NewReader(tc.stdin), &out, &errOut)
			want := tc.code
			if tc.err == "" && tc.bad {
				want = 1
			}
			if code != want {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, want, out.String(), errOut.String())
			}
			if tc.err != "" {
				if tc.code == 0 {
					if !strings.Contains(out.String(), tc.err) {
						t.Errorf("stdout lacks %q:\n%s", tc.err, out.String())
					}
					return
				}
				line := errOut.String()
				if !strings.Contains(line, tc.err) || strings.Count(line, "\n") != 1 || !strings.HasPrefix(line, "microscaling validate failed: ") {
					t.Errorf("the error as printed: %q, want one plain line saying %q", line, tc.err)
				}
				return
			}
			if errOut.Len() != 0 {
				t.Errorf("stderr: %q, want nothing", errOut.String())
			}
			for _, want := range tc.outputs {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// Every scale write keeps its own Event: 30 in a minute on one Deployment
// are 30 Events, not one "combined from similar events".
func TestEveryScaleKeepsItsEvent(t *testing.T) {
	client := fake.NewClientset()
	b := newBroadcaster(t.Context(), client)
	defer b.Shutdown()
	rec := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "microscaling"})
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "consumer", Namespace: "ns", UID: "u1"}}
	for i := range 30 {
		rec.Eventf(d, corev1.EventTypeNormal, "Scaled", "consumer %d -> %d: backlog %d > target 50", i, i+1, 100+i)
	}
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := client.CoreV1().Events("ns").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "combined from similar events") {
				return false, fmt.Errorf("an Event was combined: %q", e.Message)
			}
		}
		return len(evs.Items) == 30, nil
	})
	if err != nil {
		t.Fatalf("30 scale Events: %v", err)
	}
}

// The command line as a user meets it: what each call prints where, and
// its exit code (0 ok, 1 problems or a failure, 2 a usage mistake). None
// of these reaches a cluster: the controller's flags are checked first.
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		name         string
		args         []string
		code         int
		stdout, line string // line: the one line on stderr
	}{
		{name: "no arguments: help, never the controller", code: 0, stdout: "Available Commands:"},
		{name: "help", args: []string{"help"}, code: 0, stdout: "Available Commands:"},
		{name: "a flag and no command: help", args: []string{"--kubeconfig", "kc"}, code: 0, stdout: "Available Commands:"},
		{name: "an unknown command", args: []string{"--kubeconfig", "kc", "statu"}, code: 2, line: `microscaling failed: unknown command "statu"`},
		{name: "a stray word after a command", args: []string{"status", "extra"}, code: 2, line: `microscaling status failed: unexpected argument "extra"`},
		{name: "a second command", args: []string{"controller", "--kubeconfig", "kc", "status"}, code: 2, line: `microscaling controller failed: unexpected argument "status"`},
		{name: "an unknown flag", args: []string{"status", "--colour"}, code: 2, line: "microscaling status failed: unknown flag: --colour"},
		{name: "an output that does not exist", args: []string{"status", "-o", "yaml"}, code: 2, line: "--output: must be table or json"},
		{name: "a logging format that does not exist", args: []string{"controller", "--logging-format=xml"}, code: 2, line: "xml"},
		{name: "controller help", args: []string{"controller", "-h"}, code: 0, stdout: "--leader-elect"},
		{name: "kubectl's flags", args: []string{"status", "-h"}, code: 0, stdout: "--context"},
		{name: "version", args: []string{"version"}, code: 0, stdout: "microscaling "},
		{name: "a kubeconfig that is not there", args: []string{"status", "--kubeconfig", "/nonexistent/kc"}, code: 1, line: "microscaling status failed: "},
		// Every bad controller flag names the flag, before anything starts.
		{name: "--metrics-auth", args: []string{"controller", "--metrics-auth=maybe"}, code: 2, line: "--metrics-auth"},
		{name: "--queue-allow CIDR", args: []string{"controller", "--queue-allow=10.0.0.0/33"}, code: 2, line: "--queue-allow"},
		{name: "--queue-allow name", args: []string{"controller", "--queue-allow=not a name!"}, code: 2, line: "--queue-allow"},
		{name: "--queue-max-bytes", args: []string{"controller", "--queue-max-bytes=10"}, code: 2, line: "--queue-max-bytes"},
		{name: "--queue-concurrency", args: []string{"controller", "--queue-concurrency=0"}, code: 2, line: "--queue-concurrency"},
		{name: "--queue-hosts-per-namespace", args: []string{"controller", "--queue-hosts-per-namespace=-1"}, code: 2, line: "--queue-hosts-per-namespace"},
		{name: "--image-label-keys", args: []string{"controller", "--image-label-keys=paused"}, code: 2, line: "--image-label-keys"},
		{name: "--condition-qps", args: []string{"controller", "--condition-qps=0"}, code: 2, line: "--condition-qps: must be 1 to 1000"},
		{name: "--member-metrics", args: []string{"controller", "--member-metrics=some"}, code: 2, line: "--member-metrics: must be full or compact"},
		{name: "--shard", args: []string{"controller", "--shard=3/3"}, code: 2, line: "--shard: \"3/3\": the index must be 0 to 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut strings.Builder
			code := runCommand(t.Context(), tc.args, strings.NewReader(""), &out, &errOut)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tc.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.stdout, out.String())
			}
			if tc.line == "" {
				if errOut.Len() != 0 {
					t.Errorf("stderr: %q, want nothing", errOut.String())
				}
				return
			}
			if e := errOut.String(); !strings.Contains(e, tc.line) || strings.Count(e, "\n") != 1 {
				t.Errorf("stderr: %q, want one line saying %q", e, tc.line)
			}
		})
	}
}

// Good controller flags pass the checks.
func TestControllerFlagsAreChecked(t *testing.T) {
	fs := pflag.NewFlagSet("controller", pflag.ContinueOnError)
	o := controllerFlags(fs)
	if err := fs.Parse([]string{"--queue-allow=10.0.0.0/8,.svc.cluster.local", "--image-label-keys=queue,group", "--shard=1/3"}); err != nil {
		t.Fatal(err)
	}
	if err := o.check(); err != nil {
		t.Errorf("good flags: %v", err)
	}
	if o.shard.String() != "1/3" || o.lease() != "microscaling-1-of-3" {
		t.Errorf("--shard=1/3: shard %s, Lease %s; want 1/3 and microscaling-1-of-3", o.shard, o.lease())
	}
}

// A standby shows no state of its own and relays nothing: /api/state says
// it stands by and names the Lease holder; the leader and a process
// without election serve their own.
func TestStandbyNamesTheLeader(t *testing.T) {
	local := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "local state") })
	h := &health{interval: time.Second}
	get := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		standingBy(h, nil, local).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/state", nil))
		return rec
	}
	if rec := get(); rec.Code != http.StatusOK || rec.Body.String() != "local state" {
		t.Errorf("without election: %d %q, want the local state", rec.Code, rec.Body)
	}
	h.newLeader("microscaling-7d9f8b6c5-x2x4q")
	if rec := get(); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"microscaling-7d9f8b6c5-x2x4q"`) {
		t.Errorf("standing by: %d %q, want 503 naming the leader", rec.Code, rec.Body)
	}
	h.lead(true, time.Now)
	if rec := get(); rec.Code != http.StatusOK || rec.Body.String() != "local state" {
		t.Errorf("leading: %d %q, want the local state", rec.Code, rec.Body)
	}
}
