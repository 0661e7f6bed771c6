package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// testRegistry is go-containerregistry's in-process registry behind a
// handler that counts requests and asks for basic auth under /v2/private/.
type testRegistry struct {
	host string
	mu   sync.Mutex // guards count
	// count is the requests seen, by path.
	count map[string]int
}

const regUser, regPass = "puller", "s3cret"

func newRegistry(t *testing.T) *testRegistry {
	r := &testRegistry{count: map[string]int{}}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.count[req.URL.Path]++
		r.mu.Unlock()
		if strings.HasPrefix(req.URL.Path, "/v2/private/") {
			if u, p, ok := req.BasicAuth(); !ok || u != regUser || p != regPass {
				w.Header().Set("WWW-Authenticate", `Basic realm="microscaling-test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		inner.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *testRegistry) requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.count {
		n += c
	}
	return n
}

func labeledImage(t *testing.T, labels map[string]string) v1.Image {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Labels = labels
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes an image with labels to host/repo and returns its reference.
func push(t *testing.T, host, repo string, labels map[string]string) string {
	t.Helper()
	ref := host + "/" + repo
	auth := remote.WithAuth(&authn.Basic{Username: regUser, Password: regPass})
	if err := remote.Write(mustRef(t, ref), labeledImage(t, labels), auth); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref
}

func mustRef(t *testing.T, s string) name.Reference {
	ref, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func syncLabels(t *testing.T, s *harness.Stack, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), controllerBin, append([]string{"sync-labels", "--kubeconfig=" + s.Kubeconfig, "--registry-timeout=5s"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "failed") {
		t.Fatalf("sync-labels: %v\n%s", err, out)
	}
	return string(out)
}

func annotationsOf(t *testing.T, s *harness.Stack, name string) map[string]string {
	t.Helper()
	d, err := s.Client.AppsV1().Deployments("default").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Annotations
}

func syncedDeployment(name, image string, ann map[string]string) *appsv1.Deployment {
	if ann == nil {
		ann = map[string]string{}
	}
	ann["microscaling.com/sync-labels"] = "true"
	d := deployment("default", name, 0, ann)
	d.Spec.Template.Spec.Containers[0].Image = image
	return d
}

func TestLabelSync(t *testing.T) {
	s := harness.StartT(t, harness.Options{Nodes: bigNodes})
	reg := newRegistry(t)
	app := push(t, reg.host, "team/app:v1", map[string]string{
		"com.microscaling.priority": "2", "com.microscaling.max-containers": "7",
		"org.opencontainers.image.title": "App", "org.opencontainers.image.revision": "abc123", "maintainer": "someone"})
	create(t, s, syncedDeployment("app", app, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))

	t.Run("labels become annotations and the user's win", func(t *testing.T) {
		out := syncLabels(t, s, "--namespace=default")
		ann := annotationsOf(t, s, "app")
		if ann["microscaling.com/priority"] != "2" {
			t.Errorf("priority = %q, want 2 from the label (%s)", ann["microscaling.com/priority"], out)
		}
		if ann["microscaling.com/max-replicas"] != "3" {
			t.Errorf("max-replicas = %q, want the user's 3", ann["microscaling.com/max-replicas"])
		}
		var il struct {
			Digest string            `json:"digest"`
			Labels map[string]string `json:"labels"`
		}
		if err := json.Unmarshal([]byte(ann["image-labels.microscaling.com/c0"]), &il); err != nil {
			t.Fatalf("image-labels annotation: %v (%v)", err, ann)
		}
		if il.Labels["org.opencontainers.image.title"] != "App" || il.Labels["maintainer"] != "" || !strings.HasPrefix(il.Digest, "sha256:") {
			t.Errorf("image-labels = %+v", il)
		}
		waitEvent(t, s, "default", "app", "LabelsSynced", 5*time.Second)
	})

	t.Run("a re-pushed tag is picked up", func(t *testing.T) {
		push(t, reg.host, "team/app:v1", map[string]string{"com.microscaling.priority": "5"})
		syncLabels(t, s, "--namespace=default")
		if p := annotationsOf(t, s, "app")["microscaling.com/priority"]; p != "5" {
			t.Errorf("priority = %q after the re-push, want 5", p)
		}
	})

	t.Run("a multi-arch index resolves to linux/amd64", func(t *testing.T) {
		idx := mutate.AppendManifests(empty.Index,
			mutate.IndexAddendum{Add: labeledImage(t, map[string]string{"com.microscaling.priority": "4"}),
				Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
			mutate.IndexAddendum{Add: labeledImage(t, map[string]string{"com.microscaling.priority": "9"}),
				Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
		ref := reg.host + "/team/multi:v1"
		if err := remote.WriteIndex(mustRef(t, ref), idx); err != nil {
			t.Fatal(err)
		}
		create(t, s, syncedDeployment("multi", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
		syncLabels(t, s, "--namespace=default")
		if p := annotationsOf(t, s, "multi")["microscaling.com/priority"]; p != "4" {
			t.Errorf("priority = %q, want 4 from the linux/amd64 child", p)
		}
	})

	t.Run("a private repository needs its imagePullSecret", func(t *testing.T) {
		ref := push(t, reg.host, "private/app:v1", map[string]string{"com.microscaling.priority": "3"})
		cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.host, base64.StdEncoding.EncodeToString([]byte(regUser+":"+regPass)))
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: "default"},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)}}
		if _, err := s.Client.CoreV1().Secrets("default").Create(t.Context(), secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		withSecret := syncedDeployment("priv-ok", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"})
		withSecret.Spec.Template.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		create(t, s, withSecret)
		create(t, s, syncedDeployment("priv-no", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
		out := syncLabels(t, s, "--namespace=default")
		if p := annotationsOf(t, s, "priv-ok")["microscaling.com/priority"]; p != "3" {
			t.Errorf("priv-ok priority = %q, want 3 (%s)", p, out)
		}
		if p, ok := annotationsOf(t, s, "priv-no")["microscaling.com/priority"]; ok {
			t.Errorf("priv-no got priority %q without credentials", p)
		}
		waitEvent(t, s, "default", "priv-no", "Warning LabelSyncFailed", 5*time.Second)
		waitEvent(t, s, "default", "priv-no", "registry answered HTTP 401 UNAUTHORIZED", time.Second)
		for _, e := range mustEvents(t, s, "default", "priv-no") {
			if strings.Contains(e, "authentication required") {
				t.Errorf("an Event quotes the registry's message: %s", e)
			}
		}
		if strings.Contains(out, regPass) {
			t.Errorf("the output shows the registry password")
		}
	})

	t.Run("hostile labels are reported, not written", func(t *testing.T) {
		ref := push(t, reg.host, "team/hostile:v1", map[string]string{
			"com.microscaling.max-delta": "99999999999", "com.microscaling.scale-down-delay": "forever", "com.microscaling.sync-labels": "false",
			"com.microscaling.group": strings.Repeat("g", 300), "com.microscaling.priority": "urgent",
			"com.microscaling.../../kubernetes.io/evil": "1", "kubernetes.io/evil": "1",
			"org.opencontainers.image.description": strings.Repeat("d", 5000)})
		create(t, s, syncedDeployment("hostile", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
		syncLabels(t, s, "--namespace=default")
		ann := annotationsOf(t, s, "hostile")
		for k, v := range ann {
			if strings.HasPrefix(k, "microscaling.com/") && k != "microscaling.com/rule" && k != "microscaling.com/max-replicas" && k != "microscaling.com/sync-labels" {
				t.Errorf("hostile label wrote %s=%q", k, v)
			}
			if strings.Contains(k, "evil") {
				t.Errorf("wrote %s outside the allowed prefixes", k)
			}
		}
		for _, label := range []string{"max-delta", "scale-down-delay", "sync-labels", "com.microscaling.group", "priority", "kubernetes.io/evil", "image.description"} {
			waitEvent(t, s, "default", "hostile", label, 5*time.Second)
		}
	})

	t.Run("a third-party registry process (crane registry serve)", func(t *testing.T) {
		host := startCrane(t, s)
		ref := push(t, host, "team/crane:v1", map[string]string{"com.microscaling.priority": "6"})
		create(t, s, syncedDeployment("crane", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
		syncLabels(t, s, "--namespace=default")
		if p := annotationsOf(t, s, "crane")["microscaling.com/priority"]; p != "6" {
			t.Errorf("priority = %q, want 6 from the crane registry", p)
		}
	})

	t.Run("dry run prints the patch and writes nothing", func(t *testing.T) {
		push(t, reg.host, "team/app:v1", map[string]string{"com.microscaling.priority": "8"})
		out := syncLabels(t, s, "--namespace=default", "--dry-run")
		if !strings.Contains(out, `deployment default/app: merge patch`) || !strings.Contains(out, `"microscaling.com/priority":"8"`) {
			t.Errorf("dry run printed:\n%s", out)
		}
		if p := annotationsOf(t, s, "app")["microscaling.com/priority"]; p != "5" {
			t.Errorf("dry run wrote priority %q", p)
		}
	})

	t.Run("in the controller: synced on create and when the tag moves", func(t *testing.T) {
		ref := push(t, reg.host, "team/live:v1", map[string]string{"com.microscaling.priority": "2"})
		startController(t, s.Kubeconfig, "--sync-labels", "--label-sync-interval=1s")
		create(t, s, syncedDeployment("live", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
		eventually(t, 15*time.Second, func(ctx context.Context) error {
			if p := annotationsOf(t, s, "live")["microscaling.com/priority"]; p != "2" {
				return fmt.Errorf("priority %q, want 2", p)
			}
			return nil
		})
		push(t, reg.host, "team/live:v1", map[string]string{"com.microscaling.priority": "3"})
		eventually(t, 15*time.Second, func(ctx context.Context) error {
			if p := annotationsOf(t, s, "live")["microscaling.com/priority"]; p != "3" {
				return fmt.Errorf("priority %q, want 3", p)
			}
			return nil
		})
	})
}

// TestLabelSyncRequests: one pass over many Deployments costs at most 3
// registry requests per unique image (ping, manifest, config). With
// MICROSCALING_BENCH set it is the 1,000-Deployment benchmark of BENCHMARKS.md.
func TestLabelSyncRequests(t *testing.T) {
	s := harness.StartT(t, harness.Options{})
	reg := newRegistry(t)
	images, deployments := 20, 100
	if os.Getenv("MICROSCALING_BENCH") != "" {
		deployments = 1000
	}
	var refs []string
	for i := range images {
		refs = append(refs, push(t, reg.host, fmt.Sprintf("fleet/img%d:v1", i), map[string]string{"com.microscaling.priority": fmt.Sprint(i%5 + 1)}))
	}
	for i := range deployments {
		create(t, s, syncedDeployment(fmt.Sprintf("d%d", i), refs[i%images], map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
	}
	before := reg.requests()
	out := syncLabels(t, s, "--namespace=default")
	got := reg.requests() - before
	t.Logf("%d registry requests for %d Deployments over %d images: %s", got, deployments, images, strings.TrimSpace(out))
	fmt.Printf("LABELSYNC requests=%d images=%d deployments=%d %s\n", got, images, deployments, strings.TrimSpace(out))
	if got > 3*images {
		t.Errorf("%d registry requests, more than 3 per unique image (%d)", got, 3*images)
	}
	if !strings.Contains(out, fmt.Sprintf("%d Deployments, %d patched, 0 failed", deployments, deployments)) {
		t.Errorf("sync-labels said %q", out)
	}
}

// startCrane runs `crane registry serve` on a free port until the test ends.
func startCrane(t *testing.T, s *harness.Stack) string {
	t.Helper()
	bins, err := filepath.Glob(filepath.Join(s.Bin, "crane-*"))
	if err != nil || len(bins) == 0 {
		t.Fatalf("no crane binary in %s: %v", s.Bin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	cmd := exec.Command(bins[0], "registry", "serve", "--address", host)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		req := mustRequest(t, ctx, http.MethodGet, "http://"+host+"/v2/")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return host
}

// TestSyncLabelsJobRBAC applies manifests/sync-labels with the real kubectl
// and runs the one-shot as its service account: the ClusterRole is enough,
// and no more than it needs.
func TestSyncLabelsJobRBAC(t *testing.T) {
	s := harness.StartT(t, harness.Options{})
	out, err := s.Kubectl(t.Context(), "apply", "-k", "../../manifests/sync-labels")
	if err != nil {
		t.Fatal(err)
	}
	t.Log(out)
	reg := newRegistry(t)
	ref := push(t, reg.host, "team/rbac:v1", map[string]string{"com.microscaling.priority": "2"})
	create(t, s, syncedDeployment("rbac", ref, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
	kc, err := s.ServiceAccountKubeconfig("microscaling-system", "microscaling-sync-labels")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), controllerBin, "sync-labels", "--kubeconfig="+kc)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sync-labels as the service account: %v\n%s", err, res)
	}
	if p := annotationsOf(t, s, "rbac")["microscaling.com/priority"]; p != "2" {
		t.Errorf("priority = %q, want 2: %s", p, res)
	}
	waitEvent(t, s, "default", "rbac", "LabelsSynced", 5*time.Second)
	as := "--as=system:serviceaccount:microscaling-system:microscaling-sync-labels"
	for _, verb := range []string{"delete deployments", "update deployments", "patch deployments --subresource=scale", "list secrets", "create pods"} {
		out := canI(t, s, as, verb)
		if strings.TrimSpace(out) != "no" {
			t.Errorf("the sync-labels account can %s: %q", verb, out)
		}
	}
}

// TestPullSecretFlood: a Deployment listing 20,000 imagePullSecrets gets a
// LabelSyncFailed Warning that names the bound and costs no Secret read,
// while another Deployment's labels sync as usual.
func TestPullSecretFlood(t *testing.T) {
	s := harness.StartT(t, harness.Options{Nodes: bigNodes})
	reg := newRegistry(t)
	app := push(t, reg.host, "team/app:v1", map[string]string{"com.microscaling.priority": "2"})
	greedy := syncedDeployment("greedy", app, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"})
	for i := range 20000 {
		greedy.Spec.Template.Spec.ImagePullSecrets = append(greedy.Spec.Template.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: fmt.Sprintf("s%d", i)})
	}
	create(t, s, greedy)
	create(t, s, syncedDeployment("app", app, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
	c := startController(t, s.Kubeconfig, "--sync-labels", "--label-sync-interval=1s")
	waitEvent(t, s, "default", "greedy", "Warning LabelSyncFailed", 30*time.Second)
	for _, e := range mustEvents(t, s, "default", "greedy") {
		if strings.HasPrefix(e, "Warning LabelSyncFailed") && !strings.Contains(e, "20000 imagePullSecrets: at most 16") {
			t.Errorf("the Warning does not name the bound: %.300s", e)
		}
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		if p := annotationsOf(t, s, "app")["microscaling.com/priority"]; p != "2" {
			return fmt.Errorf("app's priority %q, want 2 from its image", p)
		}
		return nil
	})
	// Label sync's client is counted (app's patch), and read no Secret.
	if n, err := c.metric(t.Context(), "microscaling_api_requests_total", `verb="PATCH"`, `resource="deployments"`); err != nil || n == 0 {
		t.Errorf("Deployment patches counted: %v (%v), want app's", n, err)
	}
	if n, err := c.metric(t.Context(), "microscaling_api_requests_total", `resource="secrets"`); err != nil || n != 0 {
		t.Errorf("Secret requests: %v (%v), want none", n, err)
	}
}

// TestHostileRegistries: through the controller's own label sync
// (--sync-labels), one tenant's registries answer 401 with a token realm
// on the API server's address (named through localhost) and on the cloud
// metadata address, and another serves a 100 MiB image index on every
// manifest read. Neither realm is dialed, the index is refused after the
// 4 MiB bound with the controller's heap growing by less than 32 MiB, each
// member is told why in a class of its own, and another Deployment's
// labels, in a real registry process, are synced beside them.
func TestHostileRegistries(t *testing.T) {
	s := harness.StartT(t, harness.Options{Nodes: bigNodes})
	api, err := url.Parse(s.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	realm := func(realm string) string {
		return serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		}))
	}
	apiRealm := realm("https://localhost:" + api.Port() + "/api/v1/namespaces/kube-system/secrets")
	metaRealm := realm("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
	const size = 100 << 20
	var indexReads atomic.Int64
	entry := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:` + strings.Repeat("a", 64) + `"},`
	chunk := []byte(strings.Repeat(entry, 1<<16/len(entry)))
	huge := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusOK) // /v2/
			return
		}
		indexReads.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		if r.Method == http.MethodHead {
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("b", 64))
			w.Header().Set("Content-Length", fmt.Sprint(size))
			return
		}
		if _, err := io.WriteString(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`); err != nil {
			return
		}
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return // the reader gave up, as it should
			}
		}
	}))
	good := push(t, startCrane(t, s), "team/app:v1", map[string]string{"com.microscaling.priority": "2"})
	create(t, s, syncedDeployment("app", good, map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))

	c := startController(t, s.Kubeconfig, "--sync-labels", "--label-sync-interval=1s")
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		if p := annotationsOf(t, s, "app")["microscaling.com/priority"]; p != "2" {
			return fmt.Errorf("app's priority %q, want 2 from its image", p)
		}
		return nil
	})
	heap := func() float64 {
		t.Helper()
		v, err := c.metric(t.Context(), "go_memstats_heap_inuse_bytes")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := heap()
	for name, host := range map[string]string{"api-realm": apiRealm, "meta-realm": metaRealm, "huge-index": huge} {
		create(t, s, syncedDeployment(name, host+"/team/app:v1", map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "3"}))
	}
	waitEvent(t, s, "default", "api-realm", "Warning LabelSyncFailed", 30*time.Second)
	waitEvent(t, s, "default", "meta-realm", "Warning LabelSyncFailed", 10*time.Second)
	waitEvent(t, s, "default", "huge-index", "Warning LabelSyncFailed", 10*time.Second)
	// Five more passes reading the index.
	peak := base
	for reads := indexReads.Load(); indexReads.Load() < reads+5; {
		peak = math.Max(peak, heap())
		<-time.After(200 * time.Millisecond)
	}
	t.Logf("HOSTILE REGISTRIES: heap in use %.1f MiB before, at most %.1f MiB while a 100 MiB index was read %d times", base/(1<<20), peak/(1<<20), indexReads.Load())
	if grew := peak - base; grew > 32<<20 {
		t.Errorf("heap in use grew by %.1f MiB reading a 100 MiB index, want under 32 MiB", grew/(1<<20))
	}
	for name, class := range map[string]string{
		"api-realm":  "registry or token realm address not allowed",
		"meta-realm": "registry or token realm address not allowed",
		"huge-index": fmt.Sprintf("registry answer (manifest or index) over %d bytes", 4<<20),
	} {
		for _, e := range mustEvents(t, s, "default", name) {
			if strings.HasPrefix(e, "Warning LabelSyncFailed") && !strings.Contains(e, class) {
				t.Errorf("%s: %q does not say %q", name, e, class)
			}
			if strings.Contains(e, "kube-system") || strings.Contains(e, "meta-data") || strings.Contains(e, "localhost") {
				t.Errorf("%s: an Event quotes the realm: %s", name, e)
			}
		}
		if _, ok := annotationsOf(t, s, name)["microscaling.com/priority"]; ok {
			t.Errorf("%s got a priority from a hostile registry", name)
		}
	}
}

// TestLabelSyncBesideScaleWrites: label sync runs flat out in the
// controller (150 Deployments appear, each listing 16 imagePullSecrets, so
// every sync reads 17 objects before it patches: far more than its
// client's rate limit lets through) while 40 groups get a burst at once.
// They are scaled up as fast as 40 others were with label sync idle
// (within 1 s): label sync spends a rate limit of its own, never the one
// the /scale writes need.
func TestLabelSyncBesideScaleWrites(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	const groups, synced = 40, 150
	for _, ns := range []string{"quiet", "busy"} {
		if _, err := s.Kubectl(t.Context(), "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
		for i := range groups {
			topic := fmt.Sprintf("%s%d", ns, i)
			ensureChannel(t, s, topic, "work")
			create(t, s, deployment(ns, topic, 1, map[string]string{"microscaling.com/queue": "nsq://" + s.NSQ.HTTPAddr + "/" + topic + "/work",
				"microscaling.com/target-queue-length": "10", "microscaling.com/max-replicas": "2"}))
		}
	}
	c := startController(t, s.Kubeconfig, "--sync-labels", "--label-sync-interval=1s")
	react := func(ns string) time.Duration {
		t.Helper()
		start := time.Now()
		for i := range groups {
			if err := workload.Publish(s.NSQ.TCPAddr, fmt.Sprintf("%s%d", ns, i), 100); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, 60*time.Second, func(ctx context.Context) error {
			ds, err := s.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			grown := 0
			for _, d := range ds.Items {
				if d.Spec.Replicas != nil && *d.Spec.Replicas > 1 {
					grown++
				}
			}
			if grown < groups {
				return fmt.Errorf("%d of %d groups in %s scaled up", grown, groups, ns)
			}
			return nil
		})
		return time.Since(start)
	}
	quiet := react("quiet")

	// Label sync flat out.
	reg := newRegistry(t)
	image := push(t, reg.host, "fleet/app:v1", map[string]string{"com.microscaling.priority": "1"})
	for i := range synced {
		d := syncedDeployment(fmt.Sprintf("s%d", i), image, nil)
		for j := range 16 {
			d.Spec.Template.Spec.ImagePullSecrets = append(d.Spec.Template.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: fmt.Sprintf("pull-%d", j)})
		}
		create(t, s, d)
	}
	// Only label sync reads Secrets and ServiceAccounts, or patches
	// Deployments.
	labelRequests := func() float64 {
		t.Helper()
		n := 0.0
		for _, match := range [][]string{{`verb="GET"`, `resource="secrets"`}, {`verb="GET"`, `resource="serviceaccounts"`}, {`verb="PATCH"`, `resource="deployments"`}} {
			v, err := c.metric(t.Context(), "microscaling_api_requests_total", match...)
			if err != nil {
				t.Fatal(err)
			}
			n += v
		}
		return n
	}
	eventually(t, 30*time.Second, func(context.Context) error {
		if n := labelRequests(); n < 50 {
			return fmt.Errorf("label sync made %v requests, want 50 before the burst", n)
		}
		return nil
	})
	from, at := labelRequests(), time.Now()
	busy := react("busy")
	// Its rate over 5 s from the burst: the burst's own second or so is
	// too short a window to tell a rate.
	<-time.After(time.Until(at.Add(5 * time.Second)))
	rate := (labelRequests() - from) / time.Since(at).Seconds()
	t.Logf("LABEL SYNC BESIDE WRITES: 40 groups scaled up in %.2f s with label sync idle, %.2f s while it made %.1f requests/s", quiet.Seconds(), busy.Seconds(), rate)
	if rate < 5 {
		t.Errorf("label sync made %.1f requests/s around the burst, want it near its client's limit of 10/s", rate)
	}
	if busy > quiet+time.Second {
		t.Errorf("40 groups took %.2f s to scale up beside label sync, %.2f s without: want within 1 s", busy.Seconds(), quiet.Seconds())
	}
}
