package e2e

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

// podmanRun are the podman settings this machine needs: Debian's runc (crun
// fails on hybrid cgroups) and rlimits within the machine's hard limits.
var podmanRun = []string{"--runtime", "/usr/sbin/runc"}

var podmanLimits = []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func version(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests", "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// buildImages runs make image's script with env; it fails the test (never
// skips) when podman or runc cannot build.
func buildImages(t *testing.T, env ...string) {
	t.Helper()
	cmd := exec.Command("bash", "test/tools/image.sh")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("test/tools/image.sh: %v\n%s", err, out)
	}
}

var imagesOnce sync.Once
var imagesErr error

// ensureImages builds both images once for the test binary (a rebuild
// without source changes takes seconds).
func ensureImages(t *testing.T) {
	t.Helper()
	imagesOnce.Do(func() {
		cmd := exec.Command("bash", "test/tools/image.sh")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			imagesErr = fmt.Errorf("test/tools/image.sh: %w\n%s", err, out)
		}
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
}

func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("podman", append(slices.Clone(podmanRun), args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The controller image runs here: it says its version, revision and
// platform.
func TestControllerImage(t *testing.T) {
	ensureImages(t)
	out := podman(t, append(append([]string{"run", "--rm", "--read-only"}, podmanLimits...), "microscaling/microscaling:"+version(t), "version")...)
	head, err := exec.Command("git", "-C", repoRoot(t), "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("microscaling %s (revision %s, go", version(t), strings.TrimSpace(string(head)))
	if !strings.HasPrefix(out, want) || !strings.Contains(out, "linux/amd64)") {
		t.Errorf("microscaling version in the image: %q, want %q... linux/amd64)", out, want)
	}
}

// make image writes OCI layouts and pushes to a registry: each is one
// index of linux/amd64 and linux/arm64 images, non-root, with the OCI
// labels, and the controller is under 40 MB uncompressed.
func TestImageOutputs(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	oci := t.TempDir()
	buildImages(t, "OCI_DIR="+oci, "REGISTRY="+host+"/team", "TLS_VERIFY=false")
	ver := version(t)
	for _, img := range []struct{ name, title string }{{"microscaling", "microscaling"}, {"demo", "microscaling-demo"}} {
		t.Run(img.name, func(t *testing.T) {
			lp, err := layout.FromPath(filepath.Join(oci, img.name))
			if err != nil {
				t.Fatal(err)
			}
			outer, err := lp.ImageIndex()
			if err != nil {
				t.Fatal(err)
			}
			om, err := outer.IndexManifest()
			if err != nil || len(om.Manifests) != 1 {
				t.Fatalf("OCI layout of %s: %v, %d entries", img.name, err, len(om.Manifests))
			}
			fromLayout, err := outer.ImageIndex(om.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := name.ParseReference(host+"/team/"+img.name+":"+ver, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			pushed, err := remote.Index(ref)
			if err != nil {
				t.Fatalf("the pushed index: %v", err)
			}
			for where, idx := range map[string]v1.ImageIndex{"layout": fromLayout, "registry": pushed} {
				checkIndex(t, where, idx, img.title, ver, img.name == "microscaling")
			}
		})
	}
}

func checkIndex(t *testing.T, where string, idx v1.ImageIndex, title, ver string, sized bool) {
	t.Helper()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			t.Fatalf("%s: an entry without a platform", where)
		}
		p := d.Platform.OS + "/" + d.Platform.Architecture
		platforms = append(platforms, p)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != d.Platform.Architecture {
			t.Errorf("%s %s: config says %s", where, p, cf.Architecture)
		}
		if cf.Config.User != "65532:65532" {
			t.Errorf("%s %s: user %q, want 65532:65532", where, p, cf.Config.User)
		}
		labels := cf.Config.Labels
		for _, k := range []string{"org.opencontainers.image.revision", "org.opencontainers.image.source", "org.opencontainers.image.licenses"} {
			if labels[k] == "" {
				t.Errorf("%s %s: no %s label", where, p, k)
			}
		}
		if labels["org.opencontainers.image.version"] != ver || labels["org.opencontainers.image.title"] != title {
			t.Errorf("%s %s: version %q, title %q; want %q, %q", where, p, labels["org.opencontainers.image.version"], labels["org.opencontainers.image.title"], ver, title)
		}
		if sized && d.Platform.Architecture == "amd64" {
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			var size int64
			for _, l := range layers {
				rc, err := l.Uncompressed()
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, rc)
				if err != nil {
					t.Fatal(err)
				}
				if err := rc.Close(); err != nil {
					t.Fatal(err)
				}
				size += n
			}
			t.Logf("IMAGE-SIZE %s uncompressed %.1f MB", title, float64(size)/1e6)
			if size >= 40e6 {
				t.Errorf("the controller image is %.1f MB uncompressed, goal < 40 MB", float64(size)/1e6)
			}
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("%s: platforms %v, want linux/amd64 and linux/arm64", where, platforms)
	}
}

// runImage starts the controller from its image, non-root on a read-only
// root, with the kubeconfig mounted read-only and the host's network.
func runImage(t *testing.T, kubeconfig string, args ...string) *controller {
	t.Helper()
	ensureImages(t)
	return runImageRef(t, "microscaling/microscaling:"+version(t), kubeconfig, args...)
}

// runImageRef runs the controller from image (in podman's storage) with
// kubeconfig mounted.
func runImageRef(t *testing.T, image, kubeconfig string, args ...string) *controller {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// Readable by the image's user, 65532.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("microscaling-e2e-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		// The container is gone with its podman process; this removes it if
		// the process was killed instead.
		if out, err := exec.Command("podman", append(slices.Clone(podmanRun), "rm", "-f", "--ignore", name)...).CombinedOutput(); err != nil {
			t.Errorf("podman rm %s: %v\n%s", name, err, out)
		}
	})
	return launch(t, func(addr string) *exec.Cmd {
		argv := append(slices.Clone(podmanRun), "run", "--rm", "--name", name, "--network", "host", "--read-only")
		argv = append(argv, podmanLimits...)
		argv = append(argv, "-v", dir+":/kube:ro", image,
			"controller", "--kubeconfig=/kube/config", "--metrics-addr="+addr, "--v=2")
		return exec.Command("podman", append(argv, args...)...)
	})
}

// The controller run from its image against the real control plane fills
// spare room with the remainder and grows the consumer with real go-nsq
// consumers, the remainder giving way, as the process-based tests show.
func TestControllerFromImage(t *testing.T) {
	s := tenPodGroup(t)
	c := runImage(t, s.Kubeconfig)
	c.token = s.Config.BearerToken // --metrics-auth=kubernetes, the default
	if v := mustMetric(t, c, "microscaling_build_info", `version="`+version(t)+`"`, `platform="linux/amd64"`); v != 1 {
		t.Errorf("microscaling_build_info for version %s: %v, want 1", version(t), v)
	}
	waitReplicas(t, s, "default", "background", 20*time.Second, "9 (the spare room)", func(n int32) bool { return n == 9 })
	assertNoPending(t, s, "background")
	backlogGrowsConsumer(t, s, 15*time.Second)
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		cr, err := replicas(ctx, s, "default", "consumer")
		if err != nil {
			return err
		}
		br, err := replicas(ctx, s, "default", "background")
		if err != nil {
			return err
		}
		if cr+br > 10 {
			return fmt.Errorf("consumer %d + background %d > 10 pods of room", cr, br)
		}
		return nil
	})
	waitEvent(t, s, "default", "background", "taken by higher priorities", 5*time.Second)
}

// The demo image's consumer drains a real nsqd's channel.
func TestDemoRolesImage(t *testing.T) {
	ensureImages(t)
	s := harness.StartT(t, harness.Options{NSQ: true})
	ensureChannel(t, s, "jobs", "work")
	if err := workload.Publish(s.NSQ.TCPAddr, "jobs", 200); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("microscaling-demo-e2e-%d", time.Now().UnixNano())
	argv := append(slices.Clone(podmanRun), "run", "--rm", "--name", name, "--network", "host", "--read-only")
	argv = append(argv, podmanLimits...)
	argv = append(argv, "microscaling/demo:"+version(t), "consumer", "--nsqd="+s.NSQ.TCPAddr, "--topic=jobs", "--channel=work", "--work=1ms")
	cmd := exec.Command("podman", argv...)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if out, err := exec.Command("podman", append(slices.Clone(podmanRun), "stop", "-t", "5", "--ignore", name)...).CombinedOutput(); err != nil {
			t.Errorf("podman stop %s: %v\n%s", name, err, out)
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("the demo container did not stop")
		}
		if t.Failed() {
			t.Logf("demo consumer:\n%s", logs.String())
		}
	})
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		b, err := s.NSQ.Backlog(ctx, "jobs", "work")
		if err != nil {
			return err
		}
		if b != 0 {
			return fmt.Errorf("backlog %d", b)
		}
		return nil
	})
}

// The chart meets the API server: every value set renders objects the real
// API server accepts (server-side dry run); installed with helm, its
// controller, run from the built image as the chart's ServiceAccount with
// the chart's own arguments, scales the demo; helm uninstall and kubectl
// delete -k leave nothing behind.
func TestHelmChartInstall(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{
		{Name: "n1", CPU: "2", Memory: "8Gi"}, {Name: "n2", CPU: "2", Memory: "8Gi"}}})
	helmBins, err := filepath.Glob(filepath.Join(s.Bin, "helm-*"))
	if err != nil || len(helmBins) == 0 {
		t.Fatalf("no helm in %s: %v", s.Bin, err)
	}
	helmHome := t.TempDir()
	helm := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(helmBins[0], append(args, "--kubeconfig", s.Kubeconfig)...)
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+helmHome+"/cache", "HELM_CONFIG_HOME="+helmHome+"/config", "HELM_DATA_HOME="+helmHome+"/data")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := s.Kubectl(t.Context(), args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	kubectl("create", "namespace", "microscaling-system")
	for name, set := range map[string][]string{
		"default":        nil,
		"label sync":     {"labelSync.enabled=true"},
		"single dry run": {"replicaCount=1", "controller.leaderElect=false", "controller.dryRun=true"},
		// Everything but the Prometheus Operator's kinds, whose CRDs this API server lacks.
		"everything": {"replicaCount=3", "priorityClassName=system-cluster-critical", "podAnnotations.a=b", "serviceAccount.labels.c=d",
			"extraArgs[0]=--profiling", "env[0].name=TZ", "env[0].value=UTC", "networkPolicy.enabled=true",
			"topologySpreadConstraints[0].maxSkew=1", "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname", "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway"},
	} {
		args := []string{"template", "microscaling", "manifests/helm/microscaling", "-n", "microscaling-system", "--kube-version", chartKubeVersion}
		for _, v := range set {
			args = append(args, "--set", v)
		}
		rendered := filepath.Join(t.TempDir(), "rendered.yaml")
		if err := os.WriteFile(rendered, []byte(helm(args...)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := s.Kubectl(t.Context(), "apply", "--dry-run=server", "-f", rendered); err != nil {
			t.Errorf("%s: the API server refuses the rendered chart: %v\n%s", name, err, out)
		}
	}

	ensureImages(t)
	helm("install", "microscaling", "manifests/helm/microscaling", "-n", "microscaling-system", "--set", "image.repository=microscaling/microscaling")
	c := chartScalesDemo(t, s, "microscaling/microscaling:"+version(t))
	c.stop()

	helm("uninstall", "microscaling", "-n", "microscaling-system", "--wait")
	kubectl("delete", "-k", filepath.Join(repoRoot(t), "manifests", "demo"), "--wait=true")
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		left, err := s.Kubectl(ctx, "get", "deployments,services,serviceaccounts,roles,rolebindings,leases,poddisruptionbudgets,networkpolicies",
			"-n", "microscaling-system", "-l", "app.kubernetes.io/instance=microscaling", "-o", "name")
		if err != nil {
			return fmt.Errorf("listing what is left: %v: %s", err, left)
		}
		if strings.TrimSpace(left) != "" {
			return fmt.Errorf("left in microscaling-system: %s", left)
		}
		for _, kind := range []string{"clusterrole/microscaling", "clusterrolebinding/microscaling", "validatingadmissionpolicy/microscaling-annotations", "validatingadmissionpolicybinding/microscaling-annotations", "namespace/demo", "priorityclass/microscaling-remainder"} {
			if out, err := s.Kubectl(ctx, "get", kind, "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("%s still there (%v): %s", kind, err, out)
			}
		}
		return nil
	})
}

// chartKubeVersion is what helm template renders the chart for (it
// assumes v1.20 otherwise, below the chart's kubeVersion).
const chartKubeVersion = "1.30.0"

// chartScalesDemo runs the chart's controller, installed in
// microscaling-system, as its pods would: from image (which the chart's
// Deployment must name) in podman, as the chart's ServiceAccount, with the
// chart's own arguments. It applies the demo and checks that the
// controller scales it: the remainder fills the spare room, the consumer
// grows with a backlog.
func chartScalesDemo(t *testing.T, s *harness.Stack, image string) *controller {
	t.Helper()
	out := mustKubectl(t, s, "apply", "-k", filepath.Join(repoRoot(t), "manifests", "demo"))
	t.Logf("kubectl apply -k manifests/demo:\n%s", out)
	mustKubectl(t, s, "-n", "demo", "annotate", "deployment", "consumer", "--overwrite", fmt.Sprintf("microscaling.com/queue=nsq://%s/jobs/work", s.NSQ.HTTPAddr))

	// The chart's own arguments, as its pods would run them.
	d := mustDeployment(t, s, "microscaling-system", "microscaling")
	var args []string
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		switch {
		case a == "controller", strings.HasPrefix(a, "--metrics-addr="): // runImage sets its own address
		default:
			args = append(args, strings.ReplaceAll(a, "$(POD_NAME)", "microscaling-from-image"))
		}
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != image {
		t.Fatalf("the chart's image is %q, want %s", img, image)
	}
	kc, err := s.ServiceAccountKubeconfig("microscaling-system", "microscaling")
	if err != nil {
		t.Fatal(err)
	}
	c := runImageRef(t, image, kc, args...)
	// The chart's --metrics-auth=kubernetes: its ServiceAccount reviews the
	// caller's token.
	if code := statusCode(t, c.metrics, "/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %d, want 401", code)
	}
	c.token = s.Config.BearerToken
	if v := mustMetric(t, c, "microscaling_build_info"); v != 1 {
		t.Errorf("microscaling_build_info with the admin's token: %v, want 1", v)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		n, err := demoReplicas(ctx, s, "remainder")
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("remainder replicas 0, want the spare room")
		}
		return nil
	})
	demoConsumerGrows(t, s, 500, 20*time.Second)
	return c
}

func mustKubectl(t *testing.T, s *harness.Stack, args ...string) string {
	t.Helper()
	out, err := s.Kubectl(t.Context(), args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
