// Package e2e runs the controller binary against the harness's real control
// plane and nsqd, and checks what a user would see with kubectl.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// controllerBin is the controller built once for every test.
var controllerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "microscaling-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	controllerBin = filepath.Join(dir, "microscaling")
	// Tests run the controller with the race detector; benchmarks without.
	flags := []string{"build", "-race", "-o", controllerBin}
	if os.Getenv("MICROSCALING_BENCH") != "" {
		flags = []string{"build", "-o", controllerBin}
	}
	build := exec.Command("go", append(flags, "github.com/microscaling/microscaling")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the controller:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// controller is one running controller process.
type controller struct {
	cmd     *exec.Cmd
	metrics string // host:port
	// token, when set, is presented to the controller (--metrics-auth=kubernetes).
	token string
	log   *syncBuffer
	done  chan struct{}
}

// syncBuffer is the controller's output, written by the process's pipe
// and read by the test while the controller runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Bytes() []byte { return []byte(b.String()) }

// startController runs the controller binary with kubeconfig (an admin one, or
// one acting as a ServiceAccount) and waits until it is ready.
func startController(t *testing.T, kubeconfig string, args ...string) *controller {
	t.Helper()
	return startControllerAt(t, "", kubeconfig, args...)
}

// startControllerAt is startController with its metrics address given
// (host:port; a free port when empty).
func startControllerAt(t *testing.T, addr, kubeconfig string, args ...string) *controller {
	t.Helper()
	return launchAt(t, addr, func(addr string) *exec.Cmd {
		cmd := exec.Command(controllerBin, append([]string{"controller", "--kubeconfig=" + kubeconfig, "--metrics-addr=" + addr, "--metrics-auth=none", "--v=2"}, args...)...)
		if v := os.Getenv("MICROSCALING_CONTROLLER_GOMEMLIMIT"); v != "" {
			cmd.Env = append(os.Environ(), "GOMEMLIMIT="+v) // as manifests/install sets it
		}
		return cmd
	})
}

// launch starts the controller command that command makes for a metrics
// address, and waits until it is ready; it is stopped when the test ends.
func launch(t *testing.T, command func(metricsAddr string) *exec.Cmd) *controller {
	t.Helper()
	return launchAt(t, "", command)
}

// launchAt is launch with the metrics address given; a free port when empty.
func launchAt(t *testing.T, addr string, command func(metricsAddr string) *exec.Cmd) *controller {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	c := &controller{metrics: addr, log: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = command(addr)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller %s log:\n%s", addr, tail(c.log.String(), 6000))
		}
		// MICROSCALING_CONTROLLER_LOG=dir keeps every controller's whole log there.
		if dir := os.Getenv("MICROSCALING_CONTROLLER_LOG"); dir != "" {
			name := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(t.Name()+"-"+addr)+".log")
			if err := os.WriteFile(name, c.log.Bytes(), 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		_, err := c.get(ctx, "/readyz")
		return err
	})
	return c
}

// freeAddr is a free 127.0.0.1 address.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func (c *controller) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *controller) kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

func (c *controller) get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metrics+path, nil)
	if err != nil {
		return "", err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", path, resp.Status)
	}
	return string(b), nil
}

// metric returns the sum of the samples of a metric whose labels contain every
// one of match ("name" alone sums all).
func (c *controller) metric(ctx context.Context, name string, match ...string) (float64, error) {
	body, err := c.get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func eventually(t *testing.T, timeout time.Duration, cond func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not within %s: %v", timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deployment makes a Deployment with one container per cpu request given.
func deployment(ns, name string, replicas int32, ann map[string]string, cpus ...string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	if len(cpus) == 0 {
		cpus = []string{"100m"}
	}
	var cs []corev1.Container
	for i, cpu := range cpus {
		cs = append(cs, corev1.Container{
			Name: fmt.Sprintf("c%d", i), Image: "example.com/" + name + ":1",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("64Mi")}},
		})
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: cs},
			},
		},
	}
}

// remainderClass is the low PriorityClass create gives remainders that name
// none: the controller grows a remainder only below priority 0.
const remainderClass = "e2e-remainder"

func create(t *testing.T, s *harness.Stack, d *appsv1.Deployment) {
	t.Helper()
	if d.Annotations["microscaling.com/rule"] == "remainder" && d.Spec.Template.Spec.PriorityClassName == "" {
		ensureRemainderClass(t, s)
		d.Spec.Template.Spec.PriorityClassName = remainderClass
	}
	if _, err := s.Client.AppsV1().Deployments(d.Namespace).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating %s: %v", d.Name, err)
	}
}

// ensureRemainderClass creates remainderClass (value -20) if it is not there.
func ensureRemainderClass(t *testing.T, s *harness.Stack) {
	t.Helper()
	pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: remainderClass}, Value: -20, Description: "remainders in the e2e tests"}
	if _, err := s.Client.SchedulingV1().PriorityClasses().Create(t.Context(), pc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating PriorityClass %s: %v", remainderClass, err)
	}
}

func replicas(ctx context.Context, s *harness.Stack, ns, name string) (int32, error) {
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	return *d.Spec.Replicas, nil
}

// waitReplicas waits until ok(spec.replicas) holds.
func waitReplicas(t *testing.T, s *harness.Stack, ns, name string, timeout time.Duration, what string, ok func(int32) bool) {
	t.Helper()
	eventually(t, timeout, func(ctx context.Context) error {
		n, err := replicas(ctx, s, ns, name)
		if err != nil {
			return err
		}
		if !ok(n) {
			return fmt.Errorf("%s has %d replicas, want %s", name, n, what)
		}
		return nil
	})
}

// events lists the Events of a Deployment as "Type Reason: message".
func events(ctx context.Context, s *harness.Stack, ns, name string) ([]string, error) {
	list, err := s.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.name": name, "involvedObject.kind": "Deployment"}.String()})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Type+" "+e.Reason+": "+e.Message)
	}
	return out, nil
}

func waitEvent(t *testing.T, s *harness.Stack, ns, name, substr string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func(ctx context.Context) error {
		evs, err := events(ctx, s, ns, name)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if strings.Contains(e, substr) {
				return nil
			}
		}
		return fmt.Errorf("no event of %s says %q; events: %q", name, substr, evs)
	})
}

// consumers starts NSQ consumers for the Running pods of a Deployment.
func consumers(t *testing.T, s *harness.Stack, ns, app, topic, channel string, per time.Duration) *workload.Consumers {
	return runConsumers(t, &workload.Consumers{Client: s.Client, Namespace: ns, Selector: "app=" + app, NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: topic, Channel: channel, PerMessage: per})
}

// runConsumers keeps c's consumers running until the test ends.
func runConsumers(t *testing.T, c *workload.Consumers) *workload.Consumers {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func queueAnn(s *harness.Stack, topic, channel string, kv ...string) map[string]string {
	ann := map[string]string{"microscaling.com/queue": fmt.Sprintf("nsq://%s/%s/%s", s.NSQ.HTTPAddr, topic, channel)}
	for i := 0; i+1 < len(kv); i += 2 {
		ann["microscaling.com/"+kv[i]] = kv[i+1]
	}
	return ann
}

func ensureChannel(t *testing.T, s *harness.Stack, topic, channel string) {
	t.Helper()
	if err := s.NSQ.CreateChannel(t.Context(), topic, channel); err != nil {
		t.Fatal(err)
	}
}

// mustReplicas is spec.replicas of a Deployment; a failed read fails the test.
func mustReplicas(t *testing.T, s *harness.Stack, ns, name string) int32 {
	t.Helper()
	n, err := replicas(t.Context(), s, ns, name)
	if err != nil {
		t.Fatalf("reading the replicas of %s/%s: %v", ns, name, err)
	}
	return n
}

// mustEvents lists a Deployment's Events; a failed list fails the test.
func mustEvents(t *testing.T, s *harness.Stack, ns, name string) []string {
	t.Helper()
	evs, err := events(t.Context(), s, ns, name)
	if err != nil {
		t.Fatalf("listing the Events of %s/%s: %v", ns, name, err)
	}
	return evs
}

// mustMetric reads a metric of the controller; a failed read fails the test.
func mustMetric(t *testing.T, c *controller, name string, match ...string) float64 {
	t.Helper()
	v, err := c.metric(t.Context(), name, match...)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	return v
}

// mustDeployment reads a Deployment; a failed read fails the test.
func mustDeployment(t *testing.T, s *harness.Stack, ns, name string) *appsv1.Deployment {
	t.Helper()
	d, err := s.Client.AppsV1().Deployments(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading %s/%s: %v", ns, name, err)
	}
	return d
}

// mustRequest makes a request; a bad method or URL fails the test.
func mustRequest(t *testing.T, ctx context.Context, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatalf("request %s %s: %v", method, url, err)
	}
	return req
}

// canI asks the API server whether as may do verb; an answer other than
// yes or no fails the test.
func canI(t *testing.T, s *harness.Stack, as, verb string) string {
	t.Helper()
	out, err := s.Kubectl(t.Context(), append([]string{"auth", "can-i", as}, strings.Fields(verb)...)...)
	ans := strings.TrimSpace(out)
	if ans != "yes" && ans != "no" {
		t.Fatalf("kubectl auth can-i %s %s: %q, %v", as, verb, out, err)
	}
	return ans
}
