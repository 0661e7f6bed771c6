// Package harness starts a real local Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and kwok for
// simulated nodes) and a real nsqd and nsqlookupd, all on free 127.0.0.1
// ports, for end-to-end tests and the local demo. Several stacks can run side
// by side; Stop ends every process it started and removes its files.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Node describes one kwok node to create.
type Node struct {
	Name   string
	CPU    string // allocatable CPU, for example "2"
	Memory string // allocatable memory, for example "4Gi"
	Pods   int    // allocatable pods; 110 when 0
	Labels map[string]string
	Taints []corev1.Taint
}

// Options says what to start.
type Options struct {
	// Nodes are created and made Ready before Start returns.
	Nodes []Node
	// NSQ starts nsqlookupd and one nsqd registered with it.
	NSQ bool
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any)
	// EventTTL is the API server's --event-ttl; its default (1h) when 0.
	EventTTL time.Duration
	// Audit writes every request's metadata to an audit log (Stack.Audit).
	Audit bool
}

// User is a non-admin identity known to the API server by a bearer token.
type User struct {
	Name  string
	Token string
}

// Stack is one running control plane, and NSQ when asked for.
type Stack struct {
	// Config is an admin rest.Config; Kubeconfig is the same as a file.
	Config     *rest.Config
	Kubeconfig string
	Client     kubernetes.Interface
	// Users are non-admin identities with no permissions until bound.
	Users []User
	// NSQ is nil unless Options.NSQ was set.
	NSQ *NSQ
	// Dir holds every file of the stack; Stop removes it.
	Dir string
	// Bin is where the binaries are (kubectl among them).
	Bin string
	// PortForwardTarget is where a port-forward to port 8080 of any pod in
	// namespace microscaling-system lands (kwok's kubelet server forwards
	// it): a test serves a controller's --metrics-addr there to be reached
	// as `kubectl port-forward` reaches a real pod.
	PortForwardTarget string

	etcdURL   string
	apiURL    string
	pki       *pki
	etcd      *process
	apiserver *process
	others    []*process // controller-manager, scheduler, kwok
	opts      Options
	log       func(string, ...any)

	stopOnce sync.Once
}

// Binaries builds the binaries if needed (printing progress on stderr) and
// returns their directory. MICROSCALING_BIN overrides it.
func Binaries() (string, error) {
	if dir := os.Getenv("MICROSCALING_BIN"); dir != "" {
		return dir, nil
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "tools", "build.sh")
	var out bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building the test binaries with %s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return lines[len(lines)-1], nil
}

// Start starts a stack. On error everything started so far is stopped.
func Start(ctx context.Context, opts Options) (s *Stack, err error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "microscaling-stack-")
	if err != nil {
		return nil, fmt.Errorf("making stack directory: %w", err)
	}
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s = &Stack{Dir: dir, Bin: bin, log: logf, opts: opts}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	t0 := time.Now()
	if s.pki, err = newPKI(dir); err != nil {
		return s, err
	}
	if err := s.startEtcd(ctx); err != nil {
		return s, err
	}
	if err := s.startAPIServer(ctx); err != nil {
		return s, err
	}
	if err := s.startControllers(ctx); err != nil {
		return s, err
	}
	for _, n := range opts.Nodes {
		if err := s.AddNode(ctx, n); err != nil {
			return s, err
		}
	}
	if err := s.waitNodesReady(ctx, len(opts.Nodes)); err != nil {
		return s, err
	}
	if opts.NSQ {
		if s.NSQ, err = startNSQ(ctx, bin, dir); err != nil {
			return s, err
		}
	}
	logf("stack ready in %s: kubeconfig %s", time.Since(t0).Round(100*time.Millisecond), s.Kubeconfig)
	return s, nil
}

func (s *Stack) startEtcd(ctx context.Context) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	s.etcdURL = "http://" + addr(ports[0])
	peer := "http://" + addr(ports[1])
	s.etcd = &process{
		name: "etcd", bin: filepath.Join(s.Bin, "etcd"), log: filepath.Join(s.Dir, "etcd.log"),
		args: []string{
			"--name=harness", "--data-dir=" + filepath.Join(s.Dir, "etcd"),
			"--listen-client-urls=" + s.etcdURL, "--advertise-client-urls=" + s.etcdURL,
			"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=harness=" + peer, "--unsafe-no-fsync", "--log-level=warn",
		},
	}
	return s.runEtcd(ctx)
}

func (s *Stack) runEtcd(ctx context.Context) error {
	if err := s.etcd.start(); err != nil {
		return err
	}
	return waitHTTP(ctx, s.etcd, http.DefaultClient, s.etcdURL+"/health")
}

func (s *Stack) startAPIServer(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.apiURL = "https://" + addr(port)
	admin := randomToken()
	s.Users = []User{{Name: "alice", Token: randomToken()}, {Name: "bob", Token: randomToken()}}
	tokens := fmt.Sprintf("%s,admin,admin-uid,system:masters\n", admin)
	for _, u := range s.Users {
		tokens += fmt.Sprintf("%s,%s,%s-uid\n", u.Token, u.Name, u.Name)
	}
	tokenFile := filepath.Join(s.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	s.apiserver = &process{
		name: "kube-apiserver", bin: filepath.Join(s.Bin, "kube-apiserver"), log: filepath.Join(s.Dir, "kube-apiserver.log"),
		args: []string{
			"--etcd-servers=" + s.etcdURL, "--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
			"--advertise-address=127.0.0.1", "--cert-dir=" + filepath.Join(s.Dir, "apiserver-certs"),
			"--tls-cert-file=" + s.pki.serverCert, "--tls-private-key-file=" + s.pki.serverKey,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + s.pki.saPub, "--service-account-signing-key-file=" + s.pki.saKey,
			"--token-auth-file=" + tokenFile, "--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false", "--v=0",
			"--kubelet-preferred-address-types=InternalIP", // kwok's kubelet API, for port-forward
			"--client-ca-file=" + s.pki.caFile,
		},
	}
	if s.opts.EventTTL > 0 {
		s.apiserver.args = append(s.apiserver.args, "--event-ttl="+s.opts.EventTTL.String())
	}
	if s.opts.Audit {
		policy := filepath.Join(s.Dir, "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"), 0o600); err != nil {
			return fmt.Errorf("writing audit policy: %w", err)
		}
		s.apiserver.args = append(s.apiserver.args, "--audit-policy-file="+policy, "--audit-log-path="+s.auditLog(), "--audit-log-format=json", "--audit-log-mode=blocking")
	}
	s.Config = &rest.Config{
		Host: s.apiURL, BearerToken: admin, QPS: 200, Burst: 400,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.pki.caPEM},
	}
	if s.Client, err = kubernetes.NewForConfig(s.Config); err != nil {
		return fmt.Errorf("making admin client: %w", err)
	}
	s.Kubeconfig = filepath.Join(s.Dir, "kubeconfig")
	if err := s.writeKubeconfig(s.Kubeconfig, "admin", admin); err != nil {
		return err
	}
	return s.runAPIServer(ctx)
}

func (s *Stack) runAPIServer(ctx context.Context) error {
	if err := s.apiserver.start(); err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(s.Config)
	if err != nil {
		return fmt.Errorf("making HTTP client: %w", err)
	}
	return waitHTTP(ctx, s.apiserver, hc, s.apiURL+"/readyz")
}

func (s *Stack) startControllers(ctx context.Context) error {
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	// kwok serves the kubelet API (port-forward) on the nodes' address.
	s.PortForwardTarget = addr(ports[3])
	stages, err := os.ReadFile(filepath.Join(s.Bin, "kwok-stages.yaml"))
	if err != nil {
		return fmt.Errorf("reading kwok stages: %w", err)
	}
	kwokConfig := filepath.Join(s.Dir, "kwok.yaml")
	forward := fmt.Sprintf(`
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata:
  name: microscaling
spec:
  selector:
    matchNamespaces: [microscaling-system]
  forwards:
  - ports: [8080]
    target:
      address: 127.0.0.1
      port: %d
`, ports[3])
	if err := os.WriteFile(kwokConfig, append(stages, forward...), 0o600); err != nil {
		return fmt.Errorf("writing kwok config: %w", err)
	}
	kcm := &process{
		name: "kube-controller-manager", bin: filepath.Join(s.Bin, "kube-controller-manager"),
		log: filepath.Join(s.Dir, "kube-controller-manager.log"),
		args: []string{
			"--kubeconfig=" + s.Kubeconfig, "--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[0]),
			"--leader-elect=false", "--service-account-private-key-file=" + s.pki.saKey,
			"--use-service-account-credentials=false", "--controllers=*", "--concurrent-deployment-syncs=10",
			"--concurrent-replicaset-syncs=10", "--kube-api-qps=500", "--kube-api-burst=1000",
		},
	}
	sched := &process{
		name: "kube-scheduler", bin: filepath.Join(s.Bin, "kube-scheduler"), log: filepath.Join(s.Dir, "kube-scheduler.log"),
		args: []string{
			"--kubeconfig=" + s.Kubeconfig, "--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[1]),
			"--leader-elect=false",
		},
	}
	kwok := &process{
		name: "kwok", bin: filepath.Join(s.Bin, "kwok"), log: filepath.Join(s.Dir, "kwok.log"),
		args: []string{
			"-c", kwokConfig, "--kubeconfig=" + s.Kubeconfig,
			"--manage-nodes-with-label-selector=type=kwok", "--cidr=10.244.0.0/16", "--node-ip=127.0.0.2",
			"--node-lease-duration-seconds=40",
			"--server-address=127.0.0.2:" + strconv.Itoa(ports[2]), "--node-port=" + strconv.Itoa(ports[2]),
			"--tls-cert-file=" + s.pki.serverCert, "--tls-private-key-file=" + s.pki.serverKey,
		},
	}
	s.others = []*process{kcm, sched, kwok}
	for _, p := range s.others {
		if err := p.start(); err != nil {
			return err
		}
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS()}, Timeout: 2 * time.Second}
	for i, p := range []*process{kcm, sched} {
		if err := waitHTTP(ctx, p, insecure, "https://"+addr(ports[i])+"/healthz"); err != nil {
			return err
		}
	}
	// Pods need the default service account, which the controller-manager makes.
	return poll(ctx, kcm, 100*time.Millisecond, func(ctx context.Context) error {
		_, err := s.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// AddNode creates a kwok node; kwok makes it Ready shortly after.
func (s *Stack) AddNode(ctx context.Context, n Node) error {
	pods := n.Pods
	if pods == 0 {
		pods = 110
	}
	rl := corev1.ResourceList{corev1.ResourcePods: resource.MustParse(strconv.Itoa(pods))}
	for name, v := range map[corev1.ResourceName]string{corev1.ResourceCPU: n.CPU, corev1.ResourceMemory: n.Memory} {
		if v == "" {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return fmt.Errorf("node %s: %s %q: %w", n.Name, name, v, err)
		}
		rl[name] = q
	}
	labels := map[string]string{"type": "kwok", "kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
	for k, v := range n.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Labels: labels,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
		},
		Spec:   corev1.NodeSpec{Taints: n.Taints},
		Status: corev1.NodeStatus{Capacity: rl, Allocatable: rl},
	}
	if _, err := s.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating node %s: %w", n.Name, err)
	}
	return nil
}

func (s *Stack) waitNodesReady(ctx context.Context, want int) error {
	return poll(ctx, s.others[2], 100*time.Millisecond, func(ctx context.Context) error {
		nodes, err := s.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready < want {
			return fmt.Errorf("%d of %d nodes Ready", ready, want)
		}
		return nil
	})
}

// UserConfig returns a rest.Config that authenticates as u.
func (s *Stack) UserConfig(u User) *rest.Config {
	c := rest.CopyConfig(s.Config)
	c.BearerToken = u.Token
	return c
}

// UserKubeconfig writes a kubeconfig that authenticates as u with its
// bearer token, as a person's kubeconfig does.
func (s *Stack) UserKubeconfig(u User) (string, error) {
	path := filepath.Join(s.Dir, "kubeconfig-user-"+u.Name)
	return path, s.writeKubeconfig(path, u.Name, u.Token)
}

// CertKubeconfig writes a kubeconfig that authenticates as user, in
// groups, with a client certificate signed by the API server's client CA,
// as kind's and most local clusters' admin kubeconfig does.
func (s *Stack) CertKubeconfig(user string, groups ...string) (string, error) {
	cert, key, err := s.pki.clientCert(user, groups)
	if err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["harness"] = &clientcmdapi.Cluster{Server: s.apiURL, CertificateAuthorityData: s.pki.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["harness"] = &clientcmdapi.Context{Cluster: "harness", AuthInfo: user}
	cfg.CurrentContext = "harness"
	path := filepath.Join(s.Dir, "kubeconfig-cert-"+user)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("writing kubeconfig: %w", err)
	}
	return path, nil
}

// ServiceAccountKubeconfig writes a kubeconfig that acts as the service
// account namespace/name (admin impersonating it), so a process run with it
// has exactly that account's RBAC permissions.
func (s *Stack) ServiceAccountKubeconfig(namespace, name string) (string, error) {
	path := filepath.Join(s.Dir, "kubeconfig-"+namespace+"-"+name)
	return path, s.writeKubeconfig(path, "sa", s.Config.BearerToken,
		"system:serviceaccount:"+namespace+":"+name, "system:serviceaccounts", "system:serviceaccounts:"+namespace, "system:authenticated")
}

// writeKubeconfig writes a kubeconfig for the given bearer token to path,
// impersonating as (and its groups) when as is set.
func (s *Stack) writeKubeconfig(path, user, token string, as ...string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["harness"] = &clientcmdapi.Cluster{Server: s.apiURL, CertificateAuthorityData: s.pki.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	if len(as) > 0 {
		cfg.AuthInfos[user].Impersonate = as[0]
		cfg.AuthInfos[user].ImpersonateGroups = as[1:]
	}
	cfg.Contexts["harness"] = &clientcmdapi.Context{Cluster: "harness", AuthInfo: user}
	cfg.CurrentContext = "harness"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}

// Kubectl runs the harness's kubectl as admin and returns its combined output.
func (s *Stack) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "kubectl"), append([]string{"--kubeconfig=" + s.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port.
func (s *Stack) RestartAPIServer(ctx context.Context) error {
	s.apiserver.stop(10 * time.Second)
	return s.runAPIServer(ctx)
}

// RestartEtcd stops etcd and starts it again with the same data.
func (s *Stack) RestartEtcd(ctx context.Context) error {
	s.etcd.stop(10 * time.Second)
	return s.runEtcd(ctx)
}

// PIDs returns the process ids of every process the stack runs now.
func (s *Stack) PIDs() []int {
	var pids []int
	for _, p := range s.processes() {
		if pid := p.pid(); pid != 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (s *Stack) processes() []*process {
	var ps []*process
	if s.NSQ != nil {
		ps = append(ps, s.NSQ.nsqd, s.NSQ.lookupd)
	}
	ps = append(ps, s.others...)
	for _, p := range []*process{s.apiserver, s.etcd} {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// Stop ends every process of the stack, waits for each to exit, and removes
// the stack's directory. It is safe to call more than once.
func (s *Stack) Stop() {
	s.stopOnce.Do(func() {
		ps := s.processes()
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				// Teardown needs no graceful exit: a short grace, then SIGKILL.
				p.stop(2 * time.Second)
				s.log("stopped %s in %s", p.name, time.Since(t0).Round(10*time.Millisecond))
			}()
		}
		wg.Wait()
		if os.Getenv("MICROSCALING_KEEP") == "" {
			_ = os.RemoveAll(s.Dir)
		}
	})
}

// Logs returns the tail of every process log, for a failing test to print.
func (s *Stack) Logs(n int64) string {
	var b strings.Builder
	for _, p := range s.processes() {
		fmt.Fprintf(&b, "--- %s ---\n%s\n", p.name, p.tail(n))
	}
	return b.String()
}

func waitHTTP(ctx context.Context, p *process, c *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return poll(ctx, p, 100*time.Millisecond, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
