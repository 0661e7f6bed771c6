package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/test/harness"
)

// TestStatusAsTenant: `kubectl microscaling status --live`, as a person without
// admin rights, through a real port-forward (API server, kwok's kubelet API)
// to the controller pod that holds the Lease: the person sees only the
// namespace where they may get Deployments, and each line agrees with the
// Deployment. The standby relays nothing: it says it stands by and names
// the leader. /metrics and /api/state need a token; /metrics needs get on
// it. The port-forward that every authenticated user is granted reaches
// the controller's pods only: to any other pod of the namespace it is
// refused, for a user and for an ordinary ServiceAccount.
func TestStatusAsTenant(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{
		{Name: "n1", CPU: "2", Memory: "8Gi"}, {Name: "n2", CPU: "2", Memory: "8Gi"}}})
	installDemo(t, s) // demo's group, and microscaling-system's controller pods (kwok's)
	// Another tenant's group, which alice must not see.
	if _, err := s.Kubectl(t.Context(), "create", "namespace", "team-b"); err != nil {
		t.Fatal(err)
	}
	ensureChannel(t, s, "other", "work")
	create(t, s, deployment("team-b", "worker", 1, queueAnn(s, "other", "work", "target-queue-length", "10", "max-replicas", "3")))
	alice, bob := s.Users[0], s.Users[1]
	for _, args := range [][]string{
		{"create", "rolebinding", "alice-view", "-n", "demo", "--clusterrole=view", "--user=" + alice.Name},
		{"create", "clusterrolebinding", "bob-scrapes", "--clusterrole=microscaling-metrics-reader", "--user=" + bob.Name},
	} {
		if out, err := s.Kubectl(t.Context(), args...); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}

	// The leader and a standby, as manifests/install's ServiceAccount, each
	// named as one of the controller pods (kwok's) in the Lease, as the
	// manifests do (--leader-elect-identity=$(POD_NAME)). The leader serves
	// at the address the port-forwards land on.
	kc, err := s.ServiceAccountKubeconfig("microscaling-system", "microscaling")
	if err != nil {
		t.Fatal(err)
	}
	pods := controllerPods(t, s, 2)
	args := []string{"--leader-elect", "--leader-elect-lease-namespace=microscaling-system", "--metrics-auth=kubernetes"}
	leader := startControllerAt(t, s.PortForwardTarget, kc, append(args, "--leader-elect-identity="+pods[0])...)
	leader.token = s.Config.BearerToken
	waitLeader(t, leader, 1, 20*time.Second)
	standby := startControllerAt(t, freeAddr(t), kc, append(args, "--leader-elect-identity="+pods[1])...)
	standby.token = s.Config.BearerToken
	waitLeader(t, standby, 0, 5*time.Second)
	eventually(t, 10*time.Second, func(ctx context.Context) error { // once it has read the Lease
		if code, body := getAs(t, standby.metrics, "/api/state", s.Config.BearerToken); code != http.StatusServiceUnavailable || !strings.Contains(body, pods[0]) {
			return fmt.Errorf("the standby's /api/state: %d %q; want 503 naming the leader %s", code, body, pods[0])
		}
		return nil
	})

	// Who may read what, on the leader.
	for _, tc := range []struct {
		path, who, token string
		want             int
	}{
		{"/metrics", "nobody", "", http.StatusUnauthorized},
		{"/api/state", "nobody", "", http.StatusUnauthorized},
		{"/metrics", "a bad token", "not-a-token", http.StatusUnauthorized},
		{"/metrics", "alice (no get on /metrics)", alice.Token, http.StatusForbidden},
		{"/metrics", "bob (microscaling-metrics-reader)", bob.Token, http.StatusOK},
		{"/healthz", "nobody", "", http.StatusOK},
	} {
		if code := statusCode(t, leader.metrics, tc.path, tc.token); code != tc.want {
			t.Errorf("GET %s as %s: %d, want %d", tc.path, tc.who, code, tc.want)
		}
	}
	// client-go's own metrics, through component-base's providers.
	for _, name := range []string{"rest_client_requests_total", "leader_election_master_status", "microscaling_build_info"} {
		if v, err := leader.metric(t.Context(), name); err != nil || v == 0 {
			t.Errorf("%s on /metrics: %v (%v)", name, v, err)
		}
	}

	// The remainder fills the room; the consumer is steady.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := demoReplicas(ctx, s, "remainder")
		if err != nil || n == 0 {
			return fmt.Errorf("remainder replicas %d (%v), want > 0", n, err)
		}
		return nil
	})

	// kubectl finds the plugin on PATH, as a person would install it.
	plugins := t.TempDir()
	if err := os.Symlink(controllerBin, filepath.Join(plugins, "kubectl-microscaling")); err != nil {
		t.Fatal(err)
	}
	statusWith := func(ctx context.Context, kc string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "kubectl"), append([]string{"microscaling", "status", "--live"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+plugins+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+kc)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) } // a hang shows its goroutines
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kubectl microscaling status %v: %v\n%s", args, err, out)
		}
		return string(out), nil
	}
	status := func(ctx context.Context, u harness.User, args ...string) (string, error) {
		kc, err := s.UserKubeconfig(u)
		if err != nil {
			return "", err
		}
		return statusWith(ctx, kc, args...)
	}

	// Alice sees demo's two members, never team-b; every line's replicas are
	// the Deployment's, what holds each is said.
	var table string
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		out, err := status(ctx, alice)
		if err != nil {
			return err
		}
		table = out
		rows := statusRows(out)
		if len(rows) != 2 || rows[0]["MEMBER"] != "consumer" || rows[1]["MEMBER"] != "remainder" {
			return fmt.Errorf("want demo's consumer and remainder:\n%s", out)
		}
		for _, r := range rows {
			if r["NAMESPACE"] != "demo" || r["GROUP"] != "demo" {
				return fmt.Errorf("a row not of demo/demo:\n%s", out)
			}
			n, err := demoReplicas(ctx, s, r["MEMBER"])
			if err != nil {
				return err
			}
			if r["REPLICAS"] != strconv.Itoa(int(n)) {
				return fmt.Errorf("%s: status says %s replicas, the Deployment has %d:\n%s", r["MEMBER"], r["REPLICAS"], n, out)
			}
		}
		if r := rows[1]; r["RULE"] != "remainder" || r["PRIORITY"] != "2" || r["HELD BY"] != "room" {
			return fmt.Errorf("remainder: rule %s, priority %s, held by %s; want remainder, 2, room (it fills the spare room):\n%s", r["RULE"], r["PRIORITY"], r["HELD BY"], out)
		}
		if r := rows[0]; r["RULE"] != "queue" || r["BACKLOG/TARGET"] != "0/50" || !slices.Contains([]string{"delay", "min"}, r["HELD BY"]) {
			return fmt.Errorf("consumer: rule %s, backlog %s, held by %s; want queue, 0/50, delay or min:\n%s", r["RULE"], r["BACKLOG/TARGET"], r["HELD BY"], out)
		}
		return nil
	})
	t.Logf("kubectl microscaling status, as alice:\n%s", table)
	if strings.Contains(table, "team-b") || strings.Contains(table, "worker") {
		t.Errorf("alice sees team-b:\n%s", table)
	}

	// The same as JSON, against the leader's own state as admin.
	out, err := status(t.Context(), alice, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var mine dashboard.State
	if err := json.Unmarshal([]byte(out), &mine); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	body, err := leader.get(t.Context(), "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var all dashboard.State
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatal(err)
	}
	if got, want := memberNames(&mine), memberNames(&all); !slices.Equal(got, []string{"demo/consumer", "demo/remainder"}) || !slices.Contains(want, "team-b/worker") {
		t.Errorf("alice's members %v; the leader's (as admin) %v", got, want)
	}

	// The dashboard as alice, on a local address: the page, and her state
	// with no token of the browser's.
	kcAlice, err := s.UserKubeconfig(alice)
	if err != nil {
		t.Fatal(err)
	}
	local := freeAddr(t)
	dash := exec.CommandContext(t.Context(), filepath.Join(s.Bin, "kubectl"), "microscaling", "dashboard", "--listen", local)
	dash.Env = append(os.Environ(), "PATH="+plugins+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+kcAlice)
	var dashOut strings.Builder
	dash.Stdout, dash.Stderr = &dashOut, &dashOut
	if err := dash.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dash.Process.Signal(syscall.SIGTERM)
		_ = dash.Wait()
		if t.Failed() {
			t.Logf("kubectl microscaling dashboard:\n%s", dashOut.String())
		}
	})
	browser := &controller{metrics: local}
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		page, err := browser.get(ctx, "/")
		if err != nil || !strings.Contains(page, "<html") {
			return fmt.Errorf("the page: %v", err)
		}
		body, err := browser.get(ctx, "/api/state")
		if err != nil {
			return err
		}
		var st dashboard.State
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if got := memberNames(&st); !slices.Equal(got, []string{"demo/consumer", "demo/remainder"}) {
			return fmt.Errorf("the dashboard shows alice %v", got)
		}
		return nil
	})

	// Another pod of the controller's namespace: its port-forward is
	// refused, to alice and to an ordinary ServiceAccount, though both hold
	// the status Role's grant; the controller's pods stay reachable.
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "not-the-controller", Namespace: "microscaling-system"},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "example.com/other"}}}}
	if _, err := s.Client.CoreV1().Pods("microscaling-system").Create(t.Context(), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kcAlice, err = s.UserKubeconfig(alice)
	if err != nil {
		t.Fatal(err)
	}
	kcSA, err := s.ServiceAccountKubeconfig("demo", "default")
	if err != nil {
		t.Fatal(err)
	}
	for who, kc := range map[string]string{"alice": kcAlice, "ServiceAccount demo/default": kcSA} {
		_, err := statusWith(t.Context(), kc, "--pod", other.Name)
		if err == nil || !strings.Contains(err.Error(), "reach only the controller's pods") {
			t.Errorf("%s port-forwarding to %s: %v; want it refused by the microscaling-status-portforward policy", who, other.Name, err)
		}
		if out, err := statusWith(t.Context(), kc, "--pod", pods[0], "-o", "json"); err != nil || !strings.Contains(out, "members") {
			t.Errorf("%s port-forwarding to the controller pod %s: %v\n%s", who, pods[0], err, out)
		}
	}

	// Bob may get no Deployment anywhere: nothing to show.
	out, err = status(t.Context(), bob)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "no managed Deployments that you may read") || strings.Contains(out, "demo") {
		t.Errorf("bob's status:\n%s", out)
	}
}

// controllerPods waits for n Running controller pods of manifests/install
// (kwok's) and returns their names.
func controllerPods(t *testing.T, s *harness.Stack, n int) []string {
	t.Helper()
	var names []string
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		pods, err := s.Client.CoreV1().Pods("microscaling-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
		if err != nil {
			return err
		}
		names = names[:0]
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				names = append(names, p.Name)
			}
		}
		if len(names) < n {
			return fmt.Errorf("%d Running controller pods, want %d", len(names), n)
		}
		return nil
	})
	return names
}

// getAs GETs path at addr with a bearer token and returns the status and
// the body.
func getAs(t *testing.T, addr, path, token string) (int, string) {
	t.Helper()
	req := mustRequest(t, t.Context(), http.MethodGet, "http://"+addr+path)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

func statusCode(t *testing.T, addr, path, token string) int {
	t.Helper()
	req := mustRequest(t, t.Context(), http.MethodGet, "http://"+addr+path)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// statusRows parses the table of `microscaling status`: one map per line,
// by column heading.
func statusRows(out string) []map[string]string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return nil
	}
	head := lines[0]
	var starts []int
	var names []string
	for i := 0; i < len(head); {
		j := i
		for j < len(head) && !(head[j] == ' ' && j+1 < len(head) && head[j+1] == ' ') {
			j++
		}
		starts, names = append(starts, i), append(names, head[i:j])
		for j < len(head) && head[j] == ' ' {
			j++
		}
		i = j
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		r := map[string]string{}
		for k, st := range starts {
			end := len(l)
			if k+1 < len(starts) {
				end = min(starts[k+1], len(l))
			}
			if st < len(l) {
				r[names[k]] = strings.TrimSpace(l[st:end])
			}
		}
		rows = append(rows, r)
	}
	return rows
}

func memberNames(st *dashboard.State) []string {
	var out []string
	for _, m := range st.Members {
		out = append(out, m.Namespace+"/"+m.Name)
	}
	return out
}

// TestStateTokenAudiences: with --metrics-audiences the controller accepts
// only tokens issued for it, which the API server itself refuses, so a
// person never needs to hand it a token that could act on the cluster;
// `status --controller-token` presents such a token.
func TestStateTokenAudiences(t *testing.T) {
	s := harness.StartT(t, harness.Options{})
	c := startControllerAt(t, freeAddr(t), s.Kubeconfig, "--metrics-auth=kubernetes", "--metrics-audiences=microscaling")
	if _, err := s.Client.CoreV1().ServiceAccounts("default").Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Kubectl(t.Context(), "create", "rolebinding", "viewer", "-n", "default", "--clusterrole=view", "--serviceaccount=default:viewer"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	token := func(audiences ...string) string {
		tr, err := s.Client.CoreV1().ServiceAccounts("default").CreateToken(t.Context(), "viewer",
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	forUs, forAPI := token("microscaling"), token()
	if code, body := getAs(t, c.metrics, "/api/state", forUs); code != http.StatusOK {
		t.Errorf("/api/state with a token for microscaling: %d %s", code, body)
	}
	if code, _ := getAs(t, c.metrics, "/api/state", forAPI); code != http.StatusUnauthorized {
		t.Errorf("/api/state with a token for the API server: %d, want 401", code)
	}
	// The token the controller accepts cannot act on the cluster.
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.BearerToken = forUs
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("default").List(t.Context(), metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("the API server with the controller's token: %v, want 401", err)
	}
	// status with the kubeconfig for the API server and the token for the
	// controller.
	out, err := exec.CommandContext(t.Context(), controllerBin, "status", "--live", "--kubeconfig="+s.Kubeconfig, "--address="+c.metrics, "--controller-token="+forUs).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no managed Deployments that you may read") {
		t.Errorf("status --controller-token: %v\n%s", err, out)
	}
}

// TestTokenFlood: random tokens sent to /api/state from 40 loopback
// addresses (127.0.66.1-40), 800 a second, for 25 s (past the 10 s a review is cached): a
// scraper's /metrics and a person's /api/state, both with tokens the
// controller knows, answer every time; the flood gets only 401 and 429.
func TestTokenFlood(t *testing.T) {
	s := harness.StartT(t, harness.Options{})
	c := startControllerAt(t, freeAddr(t), s.Kubeconfig, "--metrics-auth=kubernetes")
	known := s.Config.BearerToken
	c.token = known
	for _, path := range []string{"/metrics", "/api/state"} { // known before the flood
		if code, body := getAs(t, c.metrics, path, known); code != http.StatusOK {
			t.Fatalf("%s before the flood: %d %s", path, code, body)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		flood = map[int]int{}
	)
	for i := range 40 {
		wg.Go(func() {
			// Loopback addresses no server of the harness uses (kwok
			// listens on 127.0.0.2): the flood's closed connections must
			// not hold a port a later test's server binds.
			local := &net.TCPAddr{IP: net.IPv4(127, 0, 66, byte(1+i))}
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: local}).DialContext}}
			every(ctx, 50*time.Millisecond, func(n int) bool {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metrics+"/api/state", nil)
				if err != nil {
					t.Error(err)
					return false
				}
				req.Header.Set("Authorization", fmt.Sprintf("Bearer random-%d-%d", i, n))
				resp, err := client.Do(req)
				if err != nil {
					return true // the flood ending
				}
				resp.Body.Close()
				mu.Lock()
				flood[resp.StatusCode]++
				mu.Unlock()
				return true
			})
		})
	}
	var served, failed []string
	for ctx.Err() == nil {
		for _, path := range []string{"/metrics", "/api/state"} {
			if _, err := c.get(ctx, path); err != nil {
				if ctx.Err() == nil {
					failed = append(failed, err.Error())
				}
				continue
			}
			served = append(served, path)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	wg.Wait()
	t.Logf("TOKENS: flood answers %v; known tokens served %d times, refused %d", flood, len(served), len(failed))
	if len(failed) > 0 {
		t.Errorf("the known token was refused %d times during the flood, first: %s", len(failed), failed[0])
	}
	if len(served) < 100 {
		t.Errorf("the known token was served only %d times in 25 s", len(served))
	}
	for code, n := range flood {
		if code != http.StatusUnauthorized && code != http.StatusTooManyRequests {
			t.Errorf("the flood got %d answers %d, want only 401 and 429", n, code)
		}
	}
	if flood[http.StatusTooManyRequests] == 0 {
		t.Error("no flood request was answered 429: the limits did not act")
	}
}

// TestStatusOnTheDeployment: the controller keeps each member's condition
// on its Deployment, where users look. With the API server's
// --event-ttl=2m and nsqd killed, `kubectl describe` still shows the queue
// unreadable after 3 minutes, when the Event that told it has expired.
// `kubectl microscaling status` reads the same from the API server with
// the user's own credentials: a client certificate (kind's admin, most
// local clusters) and a token both work; a person who may read one
// namespace sees only it, and -A is refused to them.
func TestStatusOnTheDeployment(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes, EventTTL: 2 * time.Minute})
	if _, err := s.Kubectl(t.Context(), "create", "namespace", "team-b"); err != nil {
		t.Fatal(err)
	}
	ensureChannel(t, s, "jobs", "work")
	ensureChannel(t, s, "other", "work")
	create(t, s, deployment("default", "consumer", 1, queueAnn(s, "jobs", "work", "target-queue-length", "10", "min-replicas", "1", "max-replicas", "5")))
	create(t, s, deployment("team-b", "worker", 1, queueAnn(s, "other", "work", "target-queue-length", "10", "min-replicas", "1", "max-replicas", "3")))
	alice := s.Users[0]
	for _, args := range [][]string{
		{"create", "rolebinding", "alice-view", "-n", "default", "--clusterrole=view", "--user=" + alice.Name},
		{"create", "rolebinding", "erin-view", "-n", "team-b", "--clusterrole=view", "--user=erin"},
	} {
		if out, err := s.Kubectl(t.Context(), args...); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	aliceKC, err := s.UserKubeconfig(alice)
	if err != nil {
		t.Fatal(err)
	}
	erinKC, err := s.CertKubeconfig("erin") // a client certificate
	if err != nil {
		t.Fatal(err)
	}
	plugins := pluginPath(t)
	status := func(kc string, args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), filepath.Join(s.Bin, "kubectl"), append([]string{"microscaling", "status"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+plugins+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+kc)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("kubectl microscaling status %v: %v\n%s", args, err, out)
		}
		return string(out), nil
	}
	startController(t, s.Kubeconfig, "--queue-timeout=300ms")
	// Read and decided: each carries the condition.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		list, err := s.Client.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var reasons []string
		for _, d := range list.Items {
			if c := condition.Find(&d); c != nil {
				reasons = append(reasons, d.Name+"="+c.Reason)
			}
		}
		if slices.Sort(reasons); !slices.Equal(reasons, []string{"consumer=AtMinReplicas", "worker=AtMinReplicas"}) {
			return fmt.Errorf("conditions %q, want both at min-replicas", reasons)
		}
		return nil
	})
	// The column a user adds to kubectl get.
	out, err := s.Kubectl(t.Context(), "get", "deploy", "-A", "-o", `custom-columns=NAME:.metadata.name,SCALING:.status.conditions[?(@.type=="microscaling.com/Scaling")].reason`)
	if err != nil || strings.Count(out, "AtMinReplicas") != 2 {
		t.Errorf("kubectl get -o custom-columns: %v\n%s", err, out)
	}

	s.NSQ.Kill()
	killed := time.Now()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		out, err := status(aliceKC)
		if err != nil {
			return err
		}
		rows := statusRows(out)
		if len(rows) != 1 || rows[0]["DEPLOYMENT"] != "consumer" || rows[0]["SCALING"] != "False" || rows[0]["REASON"] != "QueueUnreadable" {
			return fmt.Errorf("alice's status, want the consumer held by its unreadable queue:\n%s", out)
		}
		return nil
	})
	waitEvent(t, s, "default", "consumer", "Warning QueueUnreadable", 10*time.Second)

	// Alice (a token) sees default only; erin (a client certificate) sees
	// team-b only, and may not list every namespace.
	out, err = status(aliceKC)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl microscaling status, as alice (a token):\n%s", out)
	if strings.Contains(out, "worker") || strings.Contains(out, "NAMESPACE") {
		t.Errorf("alice's status shows team-b, or a namespace column without -A:\n%s", out)
	}
	out, err = status(erinKC, "-n", "team-b")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl microscaling status -n team-b, as erin (a client certificate):\n%s", out)
	if rows := statusRows(out); len(rows) != 1 || rows[0]["DEPLOYMENT"] != "worker" || rows[0]["REASON"] != "QueueUnreadable" || !strings.Contains(rows[0]["MESSAGE"], "queue unreadable") {
		t.Errorf("erin's status of team-b:\n%s", out)
	}
	if out, err := status(erinKC, "-A"); err == nil || !strings.Contains(out, "forbidden") || strings.Contains(out, "consumer") {
		t.Errorf("erin's status -A: %v; want it refused by RBAC, showing nothing\n%s", err, out)
	}
	out, err = status(s.Kubeconfig, "-A", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var all []struct{ Namespace, Name, Reason string }
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("status -A -o json: %v\n%s", err, out)
	}
	if len(all) != 2 || all[0].Name != "consumer" || all[1].Name != "worker" || all[1].Reason != "QueueUnreadable" {
		t.Errorf("admin's status -A -o json: %+v", all)
	}

	// Three minutes on, the Event has expired; describe still tells.
	select {
	case <-time.After(time.Until(killed.Add(3 * time.Minute))):
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
	evs, err := events(t.Context(), s, "default", "consumer")
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(evs, func(e string) bool { return strings.Contains(e, "QueueUnreadable") }) {
		t.Errorf("the QueueUnreadable Event is still there after 3 minutes with --event-ttl=2m: %q", evs)
	}
	describe, err := s.Kubectl(t.Context(), "describe", "deployment", "consumer", "-n", "default")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`microscaling.com/Scaling\s+False\s+QueueUnreadable`).MatchString(describe) {
		t.Errorf("kubectl describe, 3 minutes after nsqd was killed, does not show the queue unreadable:\n%s", describe)
	}
	t.Logf("kubectl describe, 3 minutes after nsqd was killed:\n%s", tail(describe, 1200))
}
