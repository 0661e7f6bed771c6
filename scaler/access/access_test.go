package access

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// reviewer answers TokenReviews for the token "alice-token" (user alice)
// and allows alice get on deployments in namespace a and on /metrics; it
// counts the reviews made.
func reviewer(t *testing.T) (*Reviewer, *int) {
	client := fake.NewClientset()
	calls := 0
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		if tr.Spec.Token == "alice-token" {
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "alice", Groups: []string{"devs"}}}
		}
		return true, tr, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		s := sar.Spec
		switch {
		case s.User != "alice":
		case s.NonResourceAttributes != nil:
			sar.Status.Allowed = s.NonResourceAttributes.Path == "/metrics" && s.NonResourceAttributes.Verb == "get"
		case s.ResourceAttributes != nil:
			r := s.ResourceAttributes
			sar.Status.Allowed = r.Namespace == "a" && r.Verb == "get" && r.Group == "apps" && r.Resource == "deployments"
		}
		return true, sar, nil
	})
	return NewReviewer(client, time.Minute), &calls
}

func get(h http.Handler, path, token string) int {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

func TestRequire(t *testing.T) {
	rv, calls := reviewer(t)
	h := rv.Require(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "mallory-token", http.StatusUnauthorized},
		{"/metrics", "alice-token", http.StatusOK},
		{"/debug/pprof/", "alice-token", http.StatusForbidden},
	} {
		if got := get(h, tc.path, tc.token); got != tc.want {
			t.Errorf("GET %s with %q: %d, want %d", tc.path, tc.token, got, tc.want)
		}
	}
	before := *calls
	get(h, "/metrics", "alice-token")
	get(h, "/metrics", "mallory-token")
	if *calls != before {
		t.Errorf("%d more reviews for answers already known, want none (cached)", *calls-before)
	}
}

func TestNamespaces(t *testing.T) {
	rv, _ := reviewer(t)
	r := httptest.NewRequest(http.MethodGet, "/api/state", nil)
	r.Header.Set("Authorization", "Bearer alice-token")
	u, err := rv.Authenticate(r.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	all, allowed, err := rv.Namespaces(r.Context(), u, []string{"a", "b"})
	if err != nil || all || !allowed["a"] || allowed["b"] {
		t.Errorf("Namespaces = all %v, %v, %v; want only a", all, allowed, err)
	}
}

// A decision is cached per everything it was asked about: the same user
// with other scopes (Extra) is asked again, not answered from another
// token's decision.
func TestDecisionCacheKeepsExtraApart(t *testing.T) {
	rv, calls := reviewer(t)
	attrs := &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"}
	scoped := &User{authenticationv1.UserInfo{Username: "alice", Groups: []string{"devs"}, Extra: map[string]authenticationv1.ExtraValue{"scopes.example.com": {"read-only"}}}}
	plain := &User{authenticationv1.UserInfo{Username: "alice", Groups: []string{"devs"}}}
	for _, u := range []*User{plain, plain, scoped, scoped} {
		if _, err := rv.Allowed(t.Context(), u, nil, attrs); err != nil {
			t.Fatal(err)
		}
	}
	if *calls != 2 {
		t.Errorf("%d SubjectAccessReviews for two users asked twice each, want 2 (one each)", *calls)
	}
}

// metricsFrom is a GET of /metrics behind rv from a client address with a
// token; it returns the status.
func metricsFrom(rv *Reviewer) func(addr, token string) int {
	h := rv.Require(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	return func(addr, token string) int {
		r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		r.RemoteAddr = addr
		r.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
}

// A flood of random tokens from one address costs a handful of
// TokenReviews, answered 429 past them; a known token from elsewhere keeps
// working, and the same rejected token is not reviewed again.
func TestRandomTokensAreLimited(t *testing.T) {
	rv, calls := reviewer(t)
	from := metricsFrom(rv)
	if code := from("10.0.0.9:1234", "alice-token"); code != http.StatusOK {
		t.Fatalf("alice before the flood: %d", code)
	}
	before := *calls
	codes := map[int]int{}
	for i := range 1000 {
		codes[from("10.6.6.6:4000", fmt.Sprintf("random-%d", i))]++
	}
	if reviews := *calls - before; reviews > sourceReviewBurst+1 {
		t.Errorf("1,000 random tokens from one address made %d TokenReviews, want at most %d", reviews, sourceReviewBurst+1)
	}
	if codes[http.StatusTooManyRequests] == 0 || codes[http.StatusOK] > 0 {
		t.Errorf("answers %v, want 401 then 429, never 200", codes)
	}
	if code := from("10.0.0.9:1234", "alice-token"); code != http.StatusOK {
		t.Errorf("alice during the flood: %d, want 200", code)
	}
	before = *calls
	for range 3 {
		from("10.0.0.7:1", "random-0")
	}
	if *calls != before {
		t.Errorf("a rejected token was reviewed again %d times", *calls-before)
	}
}

// With audiences, each TokenReview asks for them and a token is accepted
// only when the API server answers one of them back: a token for the API
// server, or an authenticator that ignores audiences, is refused.
func TestAudiences(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		if !slices.Equal(tr.Spec.Audiences, []string{"microscaling"}) {
			t.Errorf("TokenReview audiences %v, want [microscaling]", tr.Spec.Audiences)
		}
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "alice"}}
		switch tr.Spec.Token {
		case "for-microscaling":
			tr.Status.Audiences = []string{"microscaling"}
		case "for-the-api-server":
			tr.Status.Authenticated = false
		case "audience-blind": // authenticated, no audiences said
		}
		return true, tr, nil
	})
	rv := NewReviewer(client, time.Minute)
	rv.Audiences = []string{"microscaling"}
	for token, ok := range map[string]bool{"for-microscaling": true, "for-the-api-server": false, "audience-blind": false} {
		r := httptest.NewRequest(http.MethodGet, "/api/state", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		u, err := rv.Authenticate(t.Context(), r)
		if got := err == nil && u.Username == "alice"; got != ok {
			t.Errorf("%s: %v, %v; want accepted %v", token, u, err, ok)
		}
	}
}

// Random tokens from many addresses take the budget for new tokens; a
// token accepted before is reviewed again, when its cached answer expires,
// outside that budget.
func TestKnownTokensOutliveAFlood(t *testing.T) {
	rv, calls := reviewer(t)
	from := metricsFrom(rv)
	if code := from("10.0.0.9:1234", "alice-token"); code != http.StatusOK {
		t.Fatalf("alice before the flood: %d", code)
	}
	busy := 0
	for i := range 1000 {
		if from(fmt.Sprintf("10.6.%d.%d:4000", i/200, i%200), fmt.Sprintf("random-%d", i)) == http.StatusTooManyRequests {
			busy++
		}
	}
	if busy == 0 {
		t.Fatal("1,000 random tokens from 1,000 addresses: none refused for want of budget")
	}
	// Alice's cached answer expires; a fresh address, the budget spent.
	rv.users.Remove(sha256.Sum256([]byte("alice-token")))
	before := *calls
	if code := from("10.0.0.10:1234", "alice-token"); code != http.StatusOK {
		t.Errorf("alice during the flood, her cached answer expired: %d, want 200", code)
	}
	if *calls == before {
		t.Error("alice's token was not reviewed again")
	}
	// Never accepted: no such way round the budget.
	if code := from("10.0.0.11:1234", "random-new"); code != http.StatusTooManyRequests {
		t.Errorf("a new token during the flood: %d, want 429", code)
	}
}
