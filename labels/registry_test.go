package labels

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/scaler/egress"
)

// A private image's labels, read with one namespace's pull secret, must not
// be served from the cache to a caller without those credentials (by tag or
// by digest): the registry is asked again, and refuses.
func TestCachesAreKeyedByCredentials(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "team-a" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "UNAUTHORIZED", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	creds := &Keychain{auths: map[string]authn.AuthConfig{host: {Username: "team-a", Password: "s3cret"}}}
	ref := pushImage(t, host+"/private/app:1", map[string]string{"com.microscaling.priority": "1"}, remote.WithAuthFromKeychain(creds))
	r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
	digest, l, err := r.Labels(context.Background(), ref.String(), creds)
	if err != nil || l["com.microscaling.priority"] != "1" {
		t.Fatalf("with the pull secret: labels %v, err %v", l, err)
	}
	other := &Keychain{auths: map[string]authn.AuthConfig{host: {Username: "team-b", Password: "guess"}}}
	for _, image := range []string{ref.String(), host + "/private/app@" + digest} {
		if _, l, err := r.Labels(context.Background(), image, nil); err == nil || len(l) > 0 {
			t.Errorf("%s without credentials: labels %v, err %v; want the registry's refusal", image, l, err)
		}
		if _, l, err := r.Labels(context.Background(), image, other); err == nil || len(l) > 0 {
			t.Errorf("%s with other credentials: labels %v, err %v; want the registry's refusal", image, l, err)
		}
	}
}

// An image whose config blob is over MaxConfigBytes is refused before its
// config is read.
func TestLargeConfigRefused(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	ref := pushImage(t, host+"/big/app:1", map[string]string{"com.microscaling.priority": "1", "padding": strings.Repeat("x", MaxConfigBytes)})
	r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
	if _, l, err := r.Labels(context.Background(), ref.String(), nil); err == nil || !strings.Contains(err.Error(), "more than the") || len(l) > 0 {
		t.Errorf("labels %d, err %v; want the config refused for its size", len(l), err)
	}
}

// A failed read reaches the tenant's Event as the image and a class, never
// the registry's message, detail or body.
func TestFailureEchoesNothing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"internal-db.corp:5432 secret","detail":"token=hunter2"},{"code":"EVIL CODE","message":"x"}]}`)
	}))
	defer srv.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "<html>password=hunter2</html>")
	}))
	defer garbage.Close()
	// A realm the library refuses itself (a link-local address written as
	// such) is told as the address class, without the realm.
	metaRealm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://169.254.169.254/latest/meta-data/",service="registry"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer metaRealm.Close()
	r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
	for _, tc := range []struct{ image, want string }{
		{strings.TrimPrefix(srv.URL, "http://") + "/app:1", "registry answered HTTP 404 MANIFEST_UNKNOWN"},
		{strings.TrimPrefix(garbage.URL, "http://") + "/app:1", "registry answered HTTP 500"},
		{strings.TrimPrefix(metaRealm.URL, "http://") + "/app:1", "registry or token realm address not allowed"},
	} {
		_, _, err := r.Labels(context.Background(), tc.image, nil)
		if err == nil {
			t.Fatalf("%s: no error", tc.image)
		}
		got := failure(tc.image, err)
		if !strings.HasSuffix(got, tc.want) || strings.Contains(got, "hunter2") || strings.Contains(got, "secret") || strings.Contains(got, "EVIL") || strings.Contains(got, "meta-data") {
			t.Errorf("%s: Event text %q, want it to end with %q and quote nothing of the registry", tc.image, got, tc.want)
		}
	}
}

// A 100 MiB index, declared or streamed without a length, is refused having
// read at most MaxAnswerBytes of it: the heap stays far under the answer (a
// 32 MiB index took 263 MiB when the library read it whole).
func TestLargeIndexRefused(t *testing.T) {
	const size = 100 << 20
	entry := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:` + strings.Repeat("a", 64) + `"},`
	head := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`
	chunk := []byte(strings.Repeat(entry, 1<<16/len(entry)))
	for _, declared := range []bool{true, false} {
		t.Run(fmt.Sprintf("length declared %v", declared), func(t *testing.T) {
			reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.Contains(r.URL.Path, "/manifests/") {
					w.WriteHeader(http.StatusOK) // /v2/
					return
				}
				w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
				if declared {
					w.Header().Set("Content-Length", fmt.Sprint(size))
				}
				if _, err := io.WriteString(w, head); err != nil {
					return
				}
				for sent := len(head); sent < size; sent += len(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return // the reader gave up: as it should
					}
				}
			}))
			defer reg.Close()
			r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
			var err error
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, _, err = r.Labels(context.Background(), strings.TrimPrefix(reg.URL, "http://")+"/big/app:1", nil)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), "registry answer over") {
				t.Fatalf("err = %v, want the answer refused for its size", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
				t.Errorf("allocated %d MiB reading it, want under 32 MiB", grew>>20)
			}
		})
	}
}

// A tenant's registry whose token realm points at an address no tenant may
// reach (here the API server's, as the controller denies it) never has the
// realm fetched; the read fails as a class, nothing of the realm's answer
// goes anywhere.
func TestRealmOnADeniedAddressIsNotFetched(t *testing.T) {
	internalHits := 0
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		internalHits++
		_, _ = w.Write([]byte(`{"token":"internal-secret"}`))
	}))
	defer internal.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		// By name: the library refuses private realm addresses written
		// as such, not names that resolve to them.
		realm := strings.Replace(internal.URL, "127.0.0.1", "localhost", 1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`/token",service="registry"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer reg.Close()
	r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
	r.Deny = egress.NewDenied(netip.MustParseAddrPort(strings.TrimPrefix(internal.URL, "http://")))
	_, _, err := r.Labels(context.Background(), strings.TrimPrefix(reg.URL, "http://")+"/app:1", nil)
	if err == nil {
		t.Fatal("read succeeded, want the realm refused")
	}
	if internalHits != 0 {
		t.Errorf("the denied realm was fetched %d times", internalHits)
	}
	if msg := failure("app:1", err); !strings.Contains(msg, "address not allowed") || strings.Contains(msg, "internal-secret") || strings.Contains(msg, "localhost") {
		t.Errorf("the tenant's Event would read %q", msg)
	}
}

// A tag's digest is trusted for TagTTL by the Resolver's clock: within it
// the registry is not asked; past it, one HEAD asks whether the tag moved.
func TestTagTTLFollowsTheClock(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var heads, gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			switch r.Method {
			case http.MethodHead:
				heads.Add(1)
			case http.MethodGet:
				gets.Add(1)
			}
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := pushImage(t, host+"/app:1", nil)
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := NewResolver(v1.Platform{OS: "linux", Architecture: "amd64"}, 5*time.Second, time.Minute)
	r.Clock = clk
	look := func() {
		t.Helper()
		if _, _, err := r.Labels(context.Background(), ref.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	look()
	heads.Store(0)
	gets.Store(0)
	clk.SetTime(clk.Now().Add(59 * time.Second))
	look()
	if h, g := heads.Load(), gets.Load(); h != 0 || g != 0 {
		t.Errorf("within TagTTL: %d HEAD and %d GET of the manifest, want none", h, g)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	look()
	if h, g := heads.Load(), gets.Load(); h != 1 || g != 0 {
		t.Errorf("past TagTTL: %d HEAD and %d GET of the manifest, want one HEAD", h, g)
	}
}

// pushImage writes a random image with labels (none: as made) to image
// and returns its reference.
func pushImage(t *testing.T, image string, labels map[string]string, opts ...remote.Option) name.Reference {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if labels != nil {
		if img, err = mutate.Config(img, v1.Config{Labels: labels}); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := name.ParseReference(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	return ref
}
