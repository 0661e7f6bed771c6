package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// eventually polls cond every 100 ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var err error
	for {
		if err = cond(ctx); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met in %s: %v", timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func deployment(name string, replicas int32, cpu string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "work", Image: "example.com/work:1",
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}},
				}}},
			},
		},
	}
}

// podPhases counts the pods of app by phase.
func podPhases(ctx context.Context, c kubernetes.Interface, app string) (map[corev1.PodPhase]int, error) {
	pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	n := map[corev1.PodPhase]int{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			n[p.Status.Phase]++
		}
	}
	return n, nil
}

func TestDeploymentScalesOnKwokNodes(t *testing.T) {
	s := StartT(t, Options{Nodes: []Node{{Name: "node-1", CPU: "8", Memory: "16Gi"}}})
	ctx := t.Context()
	if _, err := s.Client.AppsV1().Deployments("default").Create(ctx, deployment("web", 3, "100m"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		d, err := s.Client.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != 3 {
			return fmt.Errorf("%d available, want 3", d.Status.AvailableReplicas)
		}
		return nil
	})
	scale := &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}, Spec: autoscalingv1.ScaleSpec{Replicas: 1}}
	if _, err := s.Client.AppsV1().Deployments("default").UpdateScale(ctx, "web", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating /scale: %v", err)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := podPhases(ctx, s.Client, "web")
		if err != nil {
			return err
		}
		if n[corev1.PodRunning] != 1 || len(n) != 1 {
			return fmt.Errorf("pods by phase %v, want 1 Running", n)
		}
		return nil
	})
}

func TestCapacityIsReal(t *testing.T) {
	s := StartT(t, Options{Nodes: []Node{{Name: "small-1", CPU: "2", Memory: "8Gi"}}})
	ctx := t.Context()
	// 2 CPU fits four pods of 500m; the other two stay Pending.
	if _, err := s.Client.AppsV1().Deployments("default").Create(ctx, deployment("big", 6, "500m"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := podPhases(ctx, s.Client, "big")
		if err != nil {
			return err
		}
		if n[corev1.PodRunning] != 4 || n[corev1.PodPending] != 2 {
			return fmt.Errorf("pods by phase %v, want 4 Running and 2 Pending", n)
		}
		return nil
	})
	pods, err := s.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=big", FieldSelector: "status.phase=Pending"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if !unschedulable(&p) {
			t.Errorf("pending pod %s is not marked Unschedulable: %+v", p.Name, p.Status.Conditions)
		}
	}
	if err := s.AddNode(ctx, Node{Name: "small-2", CPU: "2", Memory: "8Gi"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := podPhases(ctx, s.Client, "big")
		if err != nil {
			return err
		}
		if n[corev1.PodRunning] != 6 {
			return fmt.Errorf("pods by phase %v, want 6 Running", n)
		}
		return nil
	})
}

func unschedulable(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

func TestNonAdminIsForbidden(t *testing.T) {
	s := StartT(t, Options{})
	ctx := t.Context()
	alice := s.Users[0]
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: "team"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}},
	}
	if _, err := s.Client.RbacV1().Roles("team").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-reads-pods", Namespace: "team"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: alice.Name, APIGroup: rbacv1.GroupName}},
		RoleRef:    rbacv1.RoleRef{Kind: "Role", Name: "pod-reader", APIGroup: rbacv1.GroupName},
	}
	if _, err := s.Client.RbacV1().RoleBindings("team").Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(s.UserConfig(alice))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		_, err := c.CoreV1().Pods("team").List(ctx, metav1.ListOptions{})
		return err
	})
	forbidden := []struct {
		name string
		call func(context.Context) error
	}{
		{"list pods in another namespace", func(ctx context.Context) error {
			_, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list secrets", func(ctx context.Context) error {
			_, err := c.CoreV1().Secrets("team").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"delete a pod", func(ctx context.Context) error {
			return c.CoreV1().Pods("team").Delete(ctx, "any", metav1.DeleteOptions{})
		}},
		{"create a deployment", func(ctx context.Context) error {
			_, err := c.AppsV1().Deployments("team").Create(ctx, deployment("x", 1, "1m"), metav1.CreateOptions{})
			return err
		}},
	}
	for _, tc := range forbidden {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(ctx); !apierrors.IsForbidden(err) {
				t.Errorf("got %v, want Forbidden", err)
			}
		})
	}
}

func TestNSQMessageDepth(t *testing.T) {
	s := StartT(t, Options{NSQ: true})
	ctx := t.Context()
	// Create the channel first, so the messages land in it.
	if err := s.NSQ.CreateChannel(ctx, "jobs", "work"); err != nil {
		t.Fatal(err)
	}
	p, err := nsq.NewProducer(s.NSQ.TCPAddr, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	if err := p.Publish("jobs", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if n, err := s.NSQ.Backlog(ctx, "jobs", "work"); err != nil || n != 1 {
		t.Fatalf("backlog after publish = %d, %v; want 1", n, err)
	}
	c, err := nsq.NewConsumer("jobs", "work", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	got := make(chan string, 1)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		got <- string(m.Body)
		return nil
	}))
	if err := c.ConnectToNSQLookupd(s.NSQ.LookupdHTTPAddr); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	select {
	case body := <-got:
		if body != "hello" {
			t.Fatalf("consumed %q, want hello", body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("message not consumed through nsqlookupd")
	}
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		n, err := s.NSQ.Backlog(ctx, "jobs", "work")
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("backlog %d, want 0", n)
		}
		return nil
	})
}

func TestTeardownLeavesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// Two stacks side by side prove the ports and directories do not clash.
	var stacks []*Stack
	for range 2 {
		s, err := Start(ctx, Options{NSQ: true, Nodes: []Node{{Name: "n", CPU: "1", Memory: "1Gi"}}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop() // only does work if the test fails before the explicit Stop
		stacks = append(stacks, s)
	}
	for _, s := range stacks {
		pids := s.PIDs()
		if len(pids) != 7 {
			t.Fatalf("stack runs %d processes, want 7 (etcd, apiserver, controller-manager, scheduler, kwok, nsqd, nsqlookupd)", len(pids))
		}
		children := childrenOf(t, pids)
		host := strings.TrimPrefix(s.Config.Host, "https://")
		s.Stop()
		for _, pid := range append(pids, children...) {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("process %d still exists after Stop (kill 0: %v)", pid, err)
			}
		}
		for _, a := range []string{host, s.NSQ.HTTPAddr, s.NSQ.TCPAddr, s.NSQ.LookupdHTTPAddr} {
			l, err := net.Listen("tcp", a)
			if err != nil {
				t.Errorf("port %s still taken after Stop: %v", a, err)
				continue
			}
			l.Close()
		}
		if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stack directory %s still exists: %v", s.Dir, err)
		}
	}
}

// childrenOf lists the processes whose parent is one of pids.
func childrenOf(t *testing.T, pids []int) []int {
	t.Helper()
	parents := map[int]bool{}
	for _, p := range pids {
		parents[p] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the ")" that ends the command name: state, ppid, ...
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		var ppid int
		if len(fields) > 1 {
			fmt.Sscan(fields[1], &ppid)
		}
		if parents[ppid] {
			out = append(out, pid)
		}
	}
	return out
}

// Every queue server stops whole: no process that names its directory is
// left (RabbitMQ's Erlang VM and port mapper would escape a stop of the
// group if the start script dropped to its user itself), its ports are
// free, and it starts again on them.
func TestQueueServersStopWhole(t *testing.T) {
	for name, make := range map[string]func(dir string) (*Server, error){
		"redis":      func(dir string) (*Server, error) { return NewRedis(dir) },
		"nats":       NewNATS,
		"rabbitmq":   NewRabbitMQ,
		"prometheus": func(dir string) (*Server, error) { return NewPrometheus(dir) },
	} {
		t.Run(name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "server-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			s, err := make(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Stop()
			for range 2 { // and again after a restart
				if err := s.Start(t.Context()); err != nil {
					t.Fatal(err)
				}
				pgid := s.PID()
				if pgid == 0 {
					t.Fatalf("%s runs with no process", name)
				}
				s.Stop()
				if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
					t.Errorf("%s stopped, yet its process group %d lives on (kill 0: %v)", name, pgid, err)
				}
				// Helpers in sessions of their own end once the server has.
				eventually(t, 5*time.Second, func(context.Context) error {
					if left := processesNaming(t, dir); len(left) > 0 {
						return fmt.Errorf("%s stopped, yet processes %v still name its directory", name, left)
					}
					return nil
				})
				for _, a := range []string{s.Addr, s.HTTPAddr} {
					l, err := net.Listen("tcp", a)
					if err != nil {
						t.Errorf("port %s still taken after Stop: %v", a, err)
						continue
					}
					l.Close()
				}
			}
		})
	}
}

// processesNaming lists the processes whose command line or environment
// holds s.
func processesNaming(t *testing.T, s string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile("/proc/" + e.Name() + "/" + f)
			if err == nil && strings.Contains(string(b), s) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}
