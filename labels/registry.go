package labels

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
	"k8s.io/utils/lru"

	"github.com/microscaling/microscaling/scaler/egress"
)

// Resolver reads image labels from registries. A digest is read once; a tag
// is resolved again on every call (one HEAD) and its labels re-read only when
// the digest moved.
type Resolver struct {
	Platform v1.Platform
	Timeout  time.Duration // per registry request
	// TagTTL is how long a tag's digest is trusted without asking again, so
	// that one pass over many Deployments resolves each tag once.
	TagTTL time.Duration
	// ProxyFromEnvironment reaches registries through the environment's
	// proxy; off, none is used.
	ProxyFromEnvironment bool
	// Deny are addresses no registry or token realm may be (the API
	// server's); link-local and cloud metadata addresses are refused too
	// (egress.Refused), checked on the address dialed.
	Deny *egress.Denied
	// Clock tells the caches' ages; nil: the real one.
	Clock clock.PassiveClock

	flight singleflight.Group // one resolution per image and credentials at a time

	// The caches are keyed by the credentials that read them too: an
	// answer fetched with one namespace's pull secret is never served to a
	// caller without those credentials. Each holds at most maxCacheEntries,
	// the least recently used going first.
	byDig   *lru.Cache // cacheKey of a digest -> its labels (map[string]string)
	tags    *lru.Cache // cacheKey of a tag reference -> tagSeen
	pullers *lru.Cache // credentials hash -> *remote.Puller
	mu      sync.Mutex // serializes making a puller
}

func (r *Resolver) now() time.Time {
	if r.Clock == nil {
		return time.Now()
	}
	return r.Clock.Now()
}

// cacheKey is a digest or tag reference, read with the credentials cred.
type cacheKey struct{ cred, ref string }

// MaxConfigBytes bounds an image's config blob, where its labels are.
const MaxConfigBytes = 1 << 20

// MaxAnswerBytes bounds every registry answer label sync reads: a manifest
// or index (registries accept up to 4 MiB), a token, or a config blob
// (which MaxConfigBytes bounds further). The library would read a manifest
// of up to 100 MiB whole.
const MaxAnswerBytes = 4 << 20

// errAnswerTooLarge marks a registry answer over MaxAnswerBytes.
var errAnswerTooLarge = fmt.Errorf("registry answer over %d bytes", MaxAnswerBytes)

// capped refuses registry answers over MaxAnswerBytes: one that declares
// more at once, one that sends more when its body is read.
type capped struct{ rt http.RoundTripper }

func (c capped) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > MaxAnswerBytes {
		resp.Body.Close()
		return nil, errAnswerTooLarge
	}
	resp.Body = &cappedBody{rc: resp.Body, left: MaxAnswerBytes}
	return resp, nil
}

// cappedBody reads at most left bytes, then fails.
type cappedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errAnswerTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left <= 0 && err == nil {
		// Exactly at the bound: more is an error, the end is not.
		var one [1]byte
		if m, _ := b.rc.Read(one[:]); m > 0 {
			return n, errAnswerTooLarge
		}
		return n, io.EOF
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// errConfigTooLarge marks a config blob declared over MaxConfigBytes.
var errConfigTooLarge = fmt.Errorf("more than the %d read", MaxConfigBytes)

// maxCacheEntries bounds each cache of the Resolver.
const maxCacheEntries = 4096

type tagSeen struct {
	digest string
	at     time.Time
}

// NewResolver returns a Resolver for platform (for example linux/amd64).
func NewResolver(platform v1.Platform, timeout, tagTTL time.Duration) *Resolver {
	return &Resolver{Platform: platform, Timeout: timeout, TagTTL: tagTTL,
		byDig: lru.New(maxCacheEntries), tags: lru.New(maxCacheEntries), pullers: lru.New(maxCacheEntries)}
}

// puller reuses one Puller (its pings and tokens) per set of credentials.
func (r *Resolver) puller(kc *Keychain) (*remote.Puller, error) {
	id := kc.id()
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pullers.Get(id); ok {
		return p.(*remote.Puller), nil
	}
	var proxy func(*http.Request) (*url.URL, error)
	if r.ProxyFromEnvironment {
		proxy = http.ProxyFromEnvironment
	}
	t := &http.Transport{
		Proxy:                 proxy,
		DialContext:           egress.Dial(&net.Dialer{Timeout: r.Timeout}, r.Deny.Check),
		TLSHandshakeTimeout:   r.Timeout,
		ResponseHeaderTimeout: r.Timeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second, // a puller dropped from the cache leaves no connection behind for long
	}
	p, err := remote.NewPuller(remote.WithAuthFromKeychain(kc), remote.WithPlatform(r.Platform), remote.WithTransport(capped{t}))
	if err != nil {
		return nil, fmt.Errorf("making registry client: %w", err)
	}
	r.pullers.Add(id, p)
	return p, nil
}

// Labels returns the digest and labels of image for r.Platform.
func (r *Resolver) Labels(ctx context.Context, image string, kc *Keychain) (string, map[string]string, error) {
	type result struct {
		digest string
		labels map[string]string
	}
	v, err, _ := r.flight.Do(kc.id()+"\x00"+image, func() (any, error) {
		d, l, err := r.resolve(ctx, image, kc)
		return result{d, l}, err
	})
	if err != nil {
		return "", nil, err
	}
	res := v.(result)
	return res.digest, res.labels, nil
}

func (r *Resolver) resolve(ctx context.Context, image string, kc *Keychain) (string, map[string]string, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return "", nil, fmt.Errorf("image %q: %w", image, err)
	}
	p, err := r.puller(kc)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 4*r.Timeout)
	defer cancel()
	cred := kc.id()
	key := cacheKey{cred, ref.Name()}
	if d, ok := ref.(name.Digest); ok {
		if l, ok := r.cached(cred, d.DigestStr()); ok {
			return d.DigestStr(), l, nil
		}
	} else if last, seen := r.lastDigest(key); seen {
		if r.now().Sub(last.at) < r.TagTTL {
			if l, ok := r.cached(cred, last.digest); ok {
				return last.digest, l, nil
			}
		}
		// A tag seen before: one HEAD says whether it moved.
		desc, err := p.Head(ctx, ref)
		if err != nil {
			return "", nil, fmt.Errorf("resolving %s: %w", image, err)
		}
		if desc.Digest.String() == last.digest {
			if l, ok := r.cached(cred, last.digest); ok {
				r.tags.Add(key, tagSeen{last.digest, r.now()})
				return last.digest, l, nil
			}
		}
	}
	desc, err := p.Get(ctx, ref)
	if err != nil {
		return "", nil, fmt.Errorf("reading manifest of %s: %w", image, err)
	}
	img, err := desc.Image() // an index resolves to its child for r.Platform
	if err != nil {
		return "", nil, fmt.Errorf("image %s for %s: %w", image, r.Platform.String(), err)
	}
	// The config blob's size is declared by whoever pushed the image: check
	// it before reading (the registry client then reads no more than it
	// declares, and checks the digest).
	m, err := img.Manifest()
	if err != nil {
		return "", nil, fmt.Errorf("reading manifest of %s: %w", image, err)
	}
	if m.Config.Size > MaxConfigBytes {
		return "", nil, fmt.Errorf("config of %s: %d bytes, %w", image, m.Config.Size, errConfigTooLarge)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", nil, fmt.Errorf("reading config of %s: %w", image, err)
	}
	top := desc.Digest.String()
	r.byDig.Add(cacheKey{cred, top}, cf.Config.Labels)
	if _, ok := ref.(name.Tag); ok {
		r.tags.Add(key, tagSeen{top, r.now()})
	}
	return top, cf.Config.Labels, nil
}

func (r *Resolver) cached(cred, digest string) (map[string]string, bool) {
	l, ok := r.byDig.Get(cacheKey{cred, digest})
	if !ok {
		return nil, false
	}
	return l.(map[string]string), true
}

func (r *Resolver) lastDigest(tag cacheKey) (tagSeen, bool) {
	d, ok := r.tags.Get(tag)
	if !ok {
		return tagSeen{}, false
	}
	return d.(tagSeen), true
}

// Keychain serves credentials from imagePullSecrets: registry host -> auth.
type Keychain struct {
	auths map[string]authn.AuthConfig
}

// Resolve implements authn.Keychain; a registry without credentials is anonymous.
func (k *Keychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if k != nil {
		if a, ok := k.auths[res.RegistryStr()]; ok {
			return authn.FromConfig(a), nil
		}
	}
	return authn.Anonymous, nil
}

// id identifies the credentials without revealing them.
func (k *Keychain) id() string {
	if k == nil || len(k.auths) == 0 {
		return "anonymous"
	}
	h := sha256.New()
	for _, host := range sortedKeys(k.auths) {
		a := k.auths[host]
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s\n", host, a.Username, a.Password, a.Auth, a.IdentityToken)
	}
	return hex.EncodeToString(h.Sum(nil))
}
