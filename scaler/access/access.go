// Package access owns who may read the controller's state over HTTP: a
// bearer token is checked with a TokenReview, what its user may read with
// SubjectAccessReviews (as kube-rbac-proxy does), both cached briefly. A
// scraper needs get on the non-resource URL /metrics; a person reading the
// state sees only the namespaces where they may get Deployments.
package access

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/klog/v2"
	"k8s.io/utils/lru"
)

// User is an authenticated caller.
type User struct {
	authenticationv1.UserInfo
}

// Errors a check returns; Status maps them to an HTTP status.
var (
	ErrNoToken      = errors.New("a bearer token is required")
	ErrUnauthorized = errors.New("the bearer token was not accepted")
	ErrForbidden    = errors.New("not allowed")
	// ErrBusy: too many new tokens to review from the request's address, or
	// from everywhere; a token already reviewed is not affected.
	ErrBusy = errors.New("too many new tokens to review: try again shortly")
)

// Status is the HTTP status for an error of this package: 401, 403, or 503
// when the API server could not answer.
func Status(err error) int {
	switch {
	case errors.Is(err, ErrNoToken), errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrBusy):
		return http.StatusTooManyRequests
	default:
		return http.StatusServiceUnavailable
	}
}

// Reviewer checks tokens and access against the API server.
type Reviewer struct {
	client kubernetes.Interface
	ttl    time.Duration
	// Audiences, when set, are asked of every TokenReview: only a token
	// issued for one of them is accepted (the API server must say which),
	// so a token sent to the controller need not be one that the API
	// server itself accepts.
	Audiences []string
	// users by the SHA-256 of a token (never the token itself); decisions
	// by user and attributes. Both bounded, entries expire after ttl.
	users     *cache.LRUExpireCache
	decisions *cache.LRUExpireCache
	// TokenReviews of tokens not seen before are limited per client
	// address (sources, the most recent maxSources) and in all (newTokens),
	// so that a flood of random tokens leaves the client's budget to the
	// SubjectAccessReviews and the tokens already known.
	mu        sync.Mutex // guards sources
	sources   *lru.Cache
	newTokens flowcontrol.RateLimiter
	// good are the hashes of tokens whose last review accepted them: when
	// their cached answer expires they are reviewed again outside those
	// limits, so a flood never turns away a scraper or a person it knew.
	good *lru.Cache
}

// The limits on reviews of new tokens: per client address and in all, per
// second and in a burst.
const (
	sourceReviewQPS, sourceReviewBurst = 1, 5
	newReviewQPS, newReviewBurst       = 5, 20
	maxSources                         = 4096
	maxGood                            = 4096
)

// NewReviewer checks with client's TokenReviews and SubjectAccessReviews,
// keeping each answer for ttl.
func NewReviewer(client kubernetes.Interface, ttl time.Duration) *Reviewer {
	return &Reviewer{client: client, ttl: ttl, users: cache.NewLRUExpireCache(4096), decisions: cache.NewLRUExpireCache(16384),
		sources: lru.New(maxSources), newTokens: flowcontrol.NewTokenBucketRateLimiter(newReviewQPS, newReviewBurst), good: lru.New(maxGood)}
}

// maxToken bounds the Authorization header read; Kubernetes tokens are a
// few kilobytes at most.
const maxToken = 16 << 10

// Authenticate returns the user of the request's bearer token.
func (rv *Reviewer) Authenticate(ctx context.Context, r *http.Request) (*User, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token)
	if !ok || token == "" {
		return nil, ErrNoToken
	}
	if len(token) > maxToken {
		return nil, ErrUnauthorized
	}
	key := sha256.Sum256([]byte(token))
	if v, ok := rv.users.Get(key); ok {
		if v == nil {
			return nil, ErrUnauthorized
		}
		return v.(*User), nil
	}
	if _, known := rv.good.Get(key); !known && !rv.mayReview(r.RemoteAddr) {
		return nil, ErrBusy
	}
	res, err := rv.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: rv.Audiences}}, metav1.CreateOptions{})
	if err != nil {
		klog.FromContext(ctx).V(2).Info("TokenReview failed", "err", err)
		return nil, fmt.Errorf("checking the token: %w", err)
	}
	// An authenticator that ignores audiences says none: refused too.
	if !res.Status.Authenticated || len(rv.Audiences) > 0 && !slices.ContainsFunc(res.Status.Audiences, func(a string) bool { return slices.Contains(rv.Audiences, a) }) {
		rv.users.Add(key, nil, rv.ttl)
		rv.good.Remove(key)
		return nil, ErrUnauthorized
	}
	u := &User{res.Status.User}
	rv.users.Add(key, u, rv.ttl)
	rv.good.Add(key, struct{}{})
	return u, nil
}

// mayReview takes a review of a new token from the budget of the client at
// addr (host:port, as http.Request.RemoteAddr) and the overall one.
func (rv *Reviewer) mayReview(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	rv.mu.Lock()
	v, ok := rv.sources.Get(host)
	if !ok {
		v = flowcontrol.NewTokenBucketRateLimiter(sourceReviewQPS, sourceReviewBurst)
		rv.sources.Add(host, v)
	}
	rv.mu.Unlock()
	return v.(flowcontrol.RateLimiter).TryAccept() && rv.newTokens.TryAccept()
}

// Allowed reports whether u may do what the attributes say: exactly one of
// res and nonRes is set.
func (rv *Reviewer) Allowed(ctx context.Context, u *User, res *authorizationv1.ResourceAttributes, nonRes *authorizationv1.NonResourceAttributes) (bool, error) {
	// Everything the review is asked about is in the key, Extra (a token's
	// scopes) too, quoted so that no two users' fields run together; fmt
	// prints a map's keys sorted.
	key := fmt.Sprintf("%q\x00%q\x00%q\x00%q\x00%v\x00%v", u.Username, u.UID, u.Groups, u.Extra, res, nonRes)
	if v, ok := rv.decisions.Get(key); ok {
		return v.(bool), nil
	}
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra, ResourceAttributes: res, NonResourceAttributes: nonRes}}
	out, err := rv.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		klog.FromContext(ctx).V(2).Info("SubjectAccessReview failed", "err", err)
		return false, fmt.Errorf("checking access: %w", err)
	}
	rv.decisions.Add(key, out.Status.Allowed, rv.ttl)
	return out.Status.Allowed, nil
}

// Require wraps h so that only a user who may get the request's path as a
// non-resource URL (as /metrics is granted to a scraper) reaches it.
func (rv *Reviewer) Require(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := rv.Authenticate(r.Context(), r)
		if err == nil {
			var ok bool
			ok, err = rv.Allowed(r.Context(), u, nil, &authorizationv1.NonResourceAttributes{Path: r.URL.Path, Verb: "get"})
			if err == nil && !ok {
				err = ErrForbidden
			}
		}
		if err != nil {
			Deny(w, err)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Deny answers a request that failed a check, without echoing anything of
// it.
func Deny(w http.ResponseWriter, err error) {
	code := Status(err)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="microscaling"`)
	}
	msg := http.StatusText(code)
	switch {
	case errors.Is(err, ErrNoToken), errors.Is(err, ErrUnauthorized), errors.Is(err, ErrForbidden), errors.Is(err, ErrBusy):
		msg = err.Error()
	}
	http.Error(w, msg, code)
}

// Namespaces returns which namespaces u may read the state of: all when u
// may get Deployments cluster-wide, else those of candidates where u may
// get Deployments.
func (rv *Reviewer) Namespaces(ctx context.Context, u *User, candidates []string) (all bool, allowed map[string]bool, err error) {
	all, err = rv.Allowed(ctx, u, &authorizationv1.ResourceAttributes{Verb: "get", Group: "apps", Resource: "deployments"}, nil)
	if err != nil || all {
		return all, nil, err
	}
	// One review per namespace, namespaceReviews at a time: a view over
	// hundreds of namespaces waits for the slowest few, not for their sum.
	oks := make([]bool, len(candidates))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(namespaceReviews)
	for i, ns := range candidates {
		g.Go(func() error {
			ok, err := rv.Allowed(gctx, u, &authorizationv1.ResourceAttributes{Namespace: ns, Verb: "get", Group: "apps", Resource: "deployments"}, nil)
			oks[i] = ok
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return false, nil, err
	}
	allowed = map[string]bool{}
	for i, ns := range candidates {
		if oks[i] {
			allowed[ns] = true
		}
	}
	return false, allowed, nil
}

// namespaceReviews bounds the SubjectAccessReviews one view makes at once.
const namespaceReviews = 8
