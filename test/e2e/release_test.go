package e2e

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"sigs.k8s.io/yaml"

	"github.com/microscaling/microscaling/test/harness"
)

// TestRelease: make release against a registry on this machine, then what
// a user does with it. cosign verifies the image's signature with the
// release's public key (and not with another key) and its SPDX SBOM
// attestation, which names the modules linked in; every kubectl plugin
// archive matches its checksum in the krew manifest, and the linux/amd64
// one runs as a kubectl plugin; the chart, installed from the registry by
// helm with no Go toolchain on the PATH, names the signed image by digest,
// and that image, pulled from the registry, scales the demo.
func TestRelease(t *testing.T) {
	bin, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	tool := func(name string) string {
		t.Helper()
		found, err := filepath.Glob(filepath.Join(bin, name+"-*"))
		if err != nil || len(found) != 1 {
			t.Fatalf("%s in %s: %v %v", name, bin, found, err)
		}
		return found[0]
	}
	cosign := tool("cosign")
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")

	// The release's key pair, and another.
	keys, other := t.TempDir(), t.TempDir()
	for _, dir := range []string{keys, other} {
		cmd := exec.Command(cosign, "generate-key-pair")
		cmd.Dir, cmd.Env = dir, append(os.Environ(), "COSIGN_PASSWORD=release-test")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
		}
	}
	dist := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "release")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "REGISTRY="+host+"/team", "TLS_VERIFY=false", "COSIGN_KEY="+filepath.Join(keys, "cosign.key"),
		"COSIGN_PASSWORD=release-test", "DIST="+dist, "RELEASE_URL=https://example.invalid/v"+version(t))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make release: %v\n%s", err, tail(stderr.String(), 4000))
	}
	// The last line on stdout is the released image by digest (make may
	// print more around it when run under another make).
	var ref string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, host+"/team/microscaling@sha256:") {
			ref = l
		}
	}
	if ref == "" {
		t.Fatalf("make release printed no image by digest on stdout:\n%s", out)
	}
	digest := strings.TrimPrefix(ref, host+"/team/microscaling@")
	t.Logf("released %s", ref)

	verify := func(key string, args ...string) ([]byte, error) {
		cmd := exec.Command(cosign, append(append(args, "--key", key, "--insecure-ignore-tlog=true", "--allow-http-registry", "--allow-insecure-registry"), ref)...)
		var errOut strings.Builder
		cmd.Stderr = &errOut
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("%v: %s", err, tail(errOut.String(), 1500))
		}
		return out, nil
	}
	// The signature, with the release's key; not with another.
	sigs, err := verify(filepath.Join(keys, "cosign.pub"), "verify")
	if err != nil {
		t.Fatalf("cosign verify: %v", err)
	}
	if !strings.Contains(string(sigs), `"org.opencontainers.image.version":"`+version(t)+`"`) {
		t.Errorf("cosign verify: the signature does not carry the version:\n%s", sigs)
	}
	if _, err := verify(filepath.Join(other, "cosign.pub"), "verify"); err == nil {
		t.Errorf("cosign verify with another key passed")
	}
	// The SBOM, attested for this very digest.
	att, err := verify(filepath.Join(keys, "cosign.pub"), "verify-attestation", "--type", "spdxjson")
	if err != nil {
		t.Fatalf("cosign verify-attestation --type spdxjson: %v", err)
	}
	var envelope struct{ Payload string }
	if err := json.Unmarshal([]byte(strings.SplitN(string(att), "\n", 2)[0]), &envelope); err != nil {
		t.Fatalf("the attestation: %v\n%s", err, tail(string(att), 500))
	}
	payload, err := base64.StdEncoding.DecodeString(envelope.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var statement struct {
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		Predicate struct {
			SPDXVersion string `json:"spdxVersion"`
			Packages    []struct{ Name, VersionInfo string }
		} `json:"predicate"`
	}
	if err := json.Unmarshal(payload, &statement); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, p := range statement.Predicate.Packages {
		names[p.Name] = p.VersionInfo
	}
	if statement.PredicateType != "https://spdx.dev/Document" || statement.Predicate.SPDXVersion != "SPDX-2.3" ||
		len(statement.Subject) != 1 || "sha256:"+statement.Subject[0].Digest["sha256"] != digest ||
		names["github.com/microscaling/microscaling"] != version(t) || names["k8s.io/client-go"] == "" || names["stdlib"] == "" {
		t.Errorf("the SBOM attestation: %s for %v, %s, packages %v", statement.PredicateType, statement.Subject, statement.Predicate.SPDXVersion, names)
	}

	// The plugin archives against the krew manifest.
	b, err := os.ReadFile(filepath.Join(dist, "microscaling.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var plugin struct {
		Kind string
		Spec struct {
			Version   string
			Platforms []struct {
				Selector struct{ MatchLabels map[string]string } `json:"selector"`
				URI      string
				Sha256   string
				Bin      string
			}
		}
	}
	if err := yaml.Unmarshal(b, &plugin); err != nil {
		t.Fatal(err)
	}
	var platforms []string
	pluginDir := t.TempDir()
	for _, p := range plugin.Spec.Platforms {
		platform := p.Selector.MatchLabels["os"] + "/" + p.Selector.MatchLabels["arch"]
		platforms = append(platforms, platform)
		archive := filepath.Join(dist, filepath.Base(p.URI))
		if sum := fileSHA256(t, archive); sum != p.Sha256 {
			t.Errorf("%s: sha256 %s, the krew manifest says %s", archive, sum, p.Sha256)
		}
		if platform == "linux/amd64" {
			untar(t, archive, pluginDir)
		}
	}
	if plugin.Kind != "Plugin" || plugin.Spec.Version != "v"+version(t) ||
		!slices.Equal(platforms, []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64"}) {
		t.Errorf("krew manifest: %s %s for %v", plugin.Kind, plugin.Spec.Version, platforms)
	}
	kubectl := exec.Command(filepath.Join(bin, "kubectl"), "microscaling", "version")
	kubectl.Env = append(os.Environ(), "PATH="+pluginDir)
	if out, err := kubectl.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "microscaling "+version(t)+" (revision ") {
		t.Errorf("kubectl microscaling version, from the linux/amd64 archive: %v %q", err, out)
	}
	sums := exec.Command("sha256sum", "-c", "--strict", "SHA256SUMS")
	sums.Dir = dist
	if out, err := sums.CombinedOutput(); err != nil || strings.Count(string(out), ": OK") != 7 {
		t.Errorf("sha256sum -c SHA256SUMS (5 archives, the chart, the SBOM): %v\n%s", err, out)
	}

	// The chart from the registry, installed by helm alone.
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{
		{Name: "n1", CPU: "2", Memory: "8Gi"}, {Name: "n2", CPU: "2", Memory: "8Gi"}}})
	mustKubectl(t, s, "create", "namespace", "microscaling-system")
	path := t.TempDir() // helm and nothing else
	if err := os.Symlink(tool("helm"), filepath.Join(path, "helm")); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	helm := exec.Command(filepath.Join(path, "helm"), "install", "microscaling", "oci://"+host+"/team/charts/microscaling", "--version", version(t),
		"--plain-http", "-n", "microscaling-system", "--kubeconfig", s.Kubeconfig)
	helm.Env = []string{"PATH=" + path, "HOME=" + home}
	if out, err := helm.CombinedOutput(); err != nil {
		t.Fatalf("helm install oci://%s/team/charts/microscaling: %v\n%s", host, err, out)
	}
	if out, err := exec.Command("podman", append(slices.Clone(podmanRun), "pull", "-q", "--tls-verify=false", ref)...).CombinedOutput(); err != nil {
		t.Fatalf("podman pull %s: %v\n%s", ref, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("podman", append(slices.Clone(podmanRun), "rmi", "--ignore", ref)...).CombinedOutput(); err != nil {
			t.Logf("podman rmi %s: %v\n%s", ref, err, out)
		}
	})
	chartScalesDemo(t, s, ref).stop()
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// untar extracts a plugin archive's regular files into dir.
func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg || strings.Contains(h.Name, "/") {
			t.Fatalf("%s: unexpected entry %q", archive, h.Name)
		}
		out, err := os.OpenFile(filepath.Join(dir, h.Name), os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(h.Mode)&0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, io.LimitReader(tr, 256<<20)); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
