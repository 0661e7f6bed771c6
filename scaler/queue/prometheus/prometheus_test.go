package prometheus

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
	"github.com/microscaling/microscaling/test/harness"
)

// A real Prometheus scraping an exporter every second: the backlog and
// arrivals queries' values as the exporter's figures change, one query per
// distinct expression however many queues name it, and every way a query
// can fail, by class.
func TestQueriesARealPrometheus(t *testing.T) {
	var lag, offset atomic.Int64
	lag.Store(42)
	offset.Store(1000)
	exporter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE kafka_lag gauge\nkafka_lag{partition=\"0\"} %d\nkafka_lag{partition=\"1\"} 0\n", lag.Load())
		fmt.Fprintf(w, "# TYPE kafka_offset counter\nkafka_offset_total{partition=\"0\"} %d\n", offset.Load())
	}))
	defer exporter.Close()
	prom := harness.StartPrometheus(t, strings.TrimPrefix(exporter.URL, "http://"))

	var queries atomic.Int64
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries.Add(1)
		u, err := url.Parse("http://" + prom.Addr + r.URL.RequestURI())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.URL, r.Host, r.RequestURI = u, "", ""
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			_, _ = w.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}))
	defer counting.Close()
	host := strings.TrimPrefix(counting.URL, "http://")
	r := NewReader(&queue.Fetcher{Timeout: 5 * time.Second})
	q := annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: "sum(kafka_lag)", Sub: "sum(kafka_offset_total)"}
	same := annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: "sum(kafka_lag)"}

	read := func(qs ...annotations.QueueRef) policy.Readings {
		var refs []queue.Ref
		for _, x := range qs {
			refs = append(refs, queue.Ref{QueueRef: x, Namespaces: []string{"a"}})
		}
		return r.Read(t.Context(), refs)
	}
	// Wait for the first scrape.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var got policy.QueueReading
	for {
		var err error
		got, err = read(q).Reading(q)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "no value") {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no value within 30 s: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if got.Backlog != 42 || got.Waiting != 42 || got.Arrived != 1000 || got.NoArrivals {
		t.Errorf("reading %+v, want backlog 42 and 1000 arrived", got)
	}
	queries.Store(0)
	snap := read(q, same)
	if _, err := snap.Reading(same); err != nil {
		t.Fatal(err)
	}
	if b, err := snap.Reading(same); err != nil || !b.NoArrivals || b.Backlog != 42 {
		t.Errorf("without an arrivals query: %+v, %v; want backlog 42, no arrivals", b, err)
	}
	if n := queries.Load(); n != 1 {
		t.Errorf("%d queries for two queues of one tenant (two distinct expressions), want 1", n)
	}

	// One tenant's expressions go together; what each gave is told as if
	// asked alone. A batch the server refuses (a syntax error, a scalar
	// that label_replace cannot take) is asked again in halves: the bad
	// expression fails alone.
	for _, tc := range []struct {
		name, bad, want string
		queries         int64
	}{
		{"several series beside a count", "kafka_lag", "more than one series", 1},
		{"no value beside a count", "sum(nothing_here)", "no value", 1},
		// Sorted, the bad one comes first: the batch, then it alone and
		// the other two together.
		{"a syntax error beside a count", "sum(kafka_lag", "refused the query", 1 + 2},
		{"a scalar beside a count", "scalar(sum(kafka_lag))", "", 1 + 2},
	} {
		bad := annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: tc.bad}
		queries.Store(0)
		snap := read(q, bad)
		if got, err := snap.Reading(q); err != nil || got.Backlog != 42 || got.Arrived != 1000 {
			t.Errorf("%s: the good queue read %+v, %v; want backlog 42, 1000 arrived", tc.name, got, err)
		}
		_, err := snap.Reading(bad)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if n := queries.Load(); n != tc.queries {
			t.Errorf("%s: %d queries, want %d", tc.name, n, tc.queries)
		}
	}
	// One bad expression among 200 of a tenant: the batch is halved until
	// it is alone (about 2·log2(200) queries, not 200), and every other
	// expression is read.
	var many []annotations.QueueRef
	for i := range 199 {
		many = append(many, annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: fmt.Sprintf("sum(kafka_lag) + %d", i)})
	}
	bad := annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: "sum(kafka_lag"}
	queries.Store(0)
	snap = read(append(many, bad)...)
	for i, m := range many {
		if got, err := snap.Reading(m); err != nil || got.Backlog != int64(42+i) {
			t.Fatalf("%s among 200: %+v, %v; want backlog %d", m.Name, got, err, 42+i)
		}
	}
	if _, err := snap.Reading(bad); err == nil || !strings.Contains(err.Error(), "refused the query") {
		t.Errorf("the bad one among 200: %v, want refused", err)
	}
	n := queries.Load()
	if n > 2*8+1 {
		t.Errorf("%d queries for one bad expression among 200, want at most 17", n)
	}
	// The same queues on the next tick: asked again, the same way.
	queries.Store(0)
	snap = read(append(many, bad)...)
	if got, err := snap.Reading(many[198]); err != nil || got.Backlog != 42+198 {
		t.Errorf("read again: %+v, %v; want backlog %d", got, err, 42+198)
	}
	if _, err := snap.Reading(bad); err == nil || !strings.Contains(err.Error(), "refused the query") {
		t.Errorf("the bad one read again: %v, want refused", err)
	}
	if again := queries.Load(); again != n {
		t.Errorf("%d queries read again, want %d as the first time", again, n)
	}

	// Two tenants' expressions are never asked together (one they share is
	// asked once, for both).
	queries.Store(0)
	snap = r.Read(t.Context(), []queue.Ref{{QueueRef: q, Namespaces: []string{"a"}}, {QueueRef: same, Namespaces: []string{"b"}}})
	if _, err := snap.Reading(q); err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Reading(same); err != nil {
		t.Fatal(err)
	}
	if n := queries.Load(); n != 2 {
		t.Errorf("%d queries for two namespaces' queues, want 2", n)
	}

	for _, tc := range []struct{ expr, want string }{
		{"kafka_lag", "more than one series"},
		{"sum(nothing_here)", "no value"},
		{"sum(kafka_lag", "refused the query"},
		{"-1", "not a count"},
		{`{__name__=~".+"}`, "more than one series"},
	} {
		bad := annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: host, Name: tc.expr}
		if _, err := read(bad).Reading(bad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.expr, err, tc.want)
		}
	}
	small := NewReader(&queue.Fetcher{Timeout: 5 * time.Second, MaxBytes: 64})
	if _, err := small.Read(t.Context(), []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "answer too large") {
		t.Errorf("with a 64-byte bound: %v, want answer too large", err)
	}
}

// A Prometheus that asks for credentials: the Secret's user reads it; a
// wrong password, or none, is told as refused credentials, and the error
// holds no password.
func TestCredentialsOnARealPrometheus(t *testing.T) {
	prom := harness.StartPrometheusWithUser(t)
	f := &queue.Fetcher{Timeout: 5 * time.Second, Credentials: queue.Fixed{
		"shop/right": {Username: harness.QueueUser.Name, Password: harness.QueueUser.Password},
		"shop/wrong": {Username: harness.QueueUser.Name, Password: "not-" + harness.QueueUser.Password},
	}}
	r := NewReader(f)
	ref := func(secret string) annotations.QueueRef {
		return annotations.QueueRef{Scheme: annotations.SchemePrometheus, Host: prom.Addr, Name: "vector(7)", Secret: secret}
	}
	right := ref("shop/right")
	if got, err := r.Read(t.Context(), []queue.Ref{{QueueRef: right, Namespaces: []string{"shop"}}}).Reading(right); err != nil || got.Backlog != 7 {
		t.Fatalf("with the right password: %+v, %v; want backlog 7", got, err)
	}
	for _, secret := range []string{"shop/wrong", ""} {
		q := ref(secret)
		_, err := r.Read(t.Context(), []queue.Ref{{QueueRef: q, Namespaces: []string{"shop"}}}).Reading(q)
		if err == nil || !strings.Contains(err.Error(), "HTTP 401: credentials required or refused") {
			t.Errorf("Secret %q: %v, want HTTP 401: credentials required or refused", secret, err)
		}
		if err != nil && strings.Contains(err.Error(), harness.QueueUser.Password) {
			t.Errorf("Secret %q: the error holds the password: %v", secret, err)
		}
	}
}
