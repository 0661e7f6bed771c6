package nsq

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// allocated is what f allocated on the heap, in bytes.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A 10 MB /stats and a lookup naming 100,000 nsqds fail fast, as a class a
// tenant may see, having allocated far less than the answer (the server's
// side allocates nothing per answer, so what is counted is the reader's).
func TestHugeAnswersFailFast(t *testing.T) {
	topic := `{"topic_name":"t%d","depth":1,"message_count":1,"channels":[{"channel_name":"c","depth":1,"in_flight_count":0,"deferred_count":0,"message_count":1,"client_count":1}]},`
	var stats strings.Builder
	stats.WriteString(`{"topics":[`)
	for i := 0; stats.Len() < 10<<20; i++ {
		fmt.Fprintf(&stats, topic, i)
	}
	stats.WriteString(`{"topic_name":"jobs","depth":1}]}`)
	producers := []byte(`{"producers":[` + strings.Repeat(`{"broadcast_address":"127.0.0.1","http_port":4151},`, 100000) + `{"broadcast_address":"127.0.0.1","http_port":4151}]}`)
	statsBody := []byte(stats.String()) // made once: the server allocates nothing per answer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/lookup") {
			_, _ = w.Write(producers)
			return
		}
		_, _ = w.Write(statsBody)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		name, scheme, class string
		limit               uint64
	}{
		{"a 10 MB /stats", "nsq", "answer too large", 32 << 20},
		{"100,000 nsqds from one lookup", "nsqlookupd", "too many nsqds", 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 5 * time.Second}}
			q := annotations.QueueRef{Scheme: tc.scheme, Host: host, Name: "jobs", Sub: "work"}
			var err error
			t0 := time.Now()
			n := allocated(func() { _, err = r.Read(context.Background(), asRefs(q)).Reading(q) })
			if err == nil || !strings.Contains(err.Error(), tc.class) {
				t.Fatalf("err = %v, want the class %q", err, tc.class)
			}
			if n > tc.limit {
				t.Errorf("allocated %d MiB reading it, want under %d MiB", n>>20, tc.limit>>20)
			}
			t.Logf("%s: %v after %s, %.1f MiB allocated", tc.name, err, time.Since(t0).Round(time.Millisecond), float64(n)/(1<<20))
		})
	}
}

// A 64 MiB answer of {"data": wrappers nested inside each other, to nsqd's
// and to nsqlookupd's address: the read fails as "malformed answer" at the
// second wrapper, with bounded stack and heap, and the other queue on a
// healthy nsqd is read in the same tick.
func TestNestedWrappersAreRefused(t *testing.T) {
	nested := []byte(strings.Repeat(`{"data":`, (64<<20)/8) + "{}")
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(nested)
	}))
	defer hostile.Close()
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"topics":[{"topic_name":"jobs","channels":[{"channel_name":"work","depth":7,"client_count":1}]}]}`))
	}))
	defer healthy.Close()
	bad := strings.TrimPrefix(hostile.URL, "http://")
	good := annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(healthy.URL, "http://"), Name: "jobs", Sub: "work"}
	for _, scheme := range []string{"nsq", "nsqlookupd"} {
		t.Run(scheme, func(t *testing.T) {
			r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 5 * time.Second, MaxBytes: 128 << 20}}
			q := annotations.QueueRef{Scheme: scheme, Host: bad, Name: "jobs", Sub: "work"}
			var err, goodErr error
			var got int64
			n := allocated(func() {
				rs := r.Read(context.Background(), asRefs(q, good))
				_, err = rs.Reading(q)
				var g policy.QueueReading
				g, goodErr = rs.Reading(good)
				got = g.Backlog
			})
			if err == nil || !strings.Contains(err.Error(), "malformed answer") {
				t.Fatalf("err = %v, want the class %q", err, "malformed answer")
			}
			if goodErr != nil || got != 7 {
				t.Errorf("the healthy queue read %d, %v; want 7, nil", got, goodErr)
			}
			if n > 32<<20 {
				t.Errorf("allocated %d MiB reading it, want under 32 MiB", n>>20)
			}
		})
	}
}

// Only the topics a read asks for are kept of a /stats answer.
func TestOnlyReferencedTopicsAreKept(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(stats1x)) }))
	defer srv.Close()
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second}}
	st, err := r.stats(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"), func(topic string) bool { return topic == "fresh" })
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Topics) != 1 || st.Topics[0].Name != "fresh" || st.Topics[0].Depth != 7 {
		t.Errorf("kept %+v, want only topic fresh", st.Topics)
	}
}

// However many nsqds a tick reads, at most Concurrency requests are in
// flight.
func TestReadsAreBounded(t *testing.T) {
	var inFlight, most atomic.Int32
	var mu sync.Mutex
	var servers []*httptest.Server
	var refs []annotations.QueueRef
	for range 24 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			mu.Lock()
			if n > most.Load() {
				most.Store(n)
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond) // a slow nsqd: requests overlap
			_, _ = w.Write([]byte(stats1x))
		}))
		defer srv.Close()
		servers = append(servers, srv)
		refs = append(refs, annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(srv.URL, "http://"), Name: "jobs", Sub: "work"})
	}
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 5 * time.Second, Concurrency: 4}}
	snap := r.Read(context.Background(), asRefs(refs...))
	for _, q := range refs {
		if _, err := snap.Reading(q); err != nil {
			t.Fatal(err)
		}
	}
	if m := most.Load(); m > 4 || m < 2 {
		t.Errorf("%d requests in flight at most, want 2 to 4 (Concurrency 4)", m)
	}
}

// slowAndFast serves two nsqds' /stats until the test ends: slow answers
// once release is closed, fast at once. It returns a queue on each.
func slowAndFast(t *testing.T) (slow, fast annotations.QueueRef, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte(stats1x))
	}))
	t.Cleanup(s.Close)
	f := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(stats1x)) }))
	t.Cleanup(f.Close)
	q := func(u string) annotations.QueueRef {
		return annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(u, "http://"), Name: "jobs", Sub: "work"}
	}
	return q(s.URL), q(f.URL), release
}

// A slow nsqd delays only the queues read from it: a queue on another nsqd
// is answered as soon as its own nsqd has answered.
func TestSlowHostDelaysOnlyItsQueues(t *testing.T) {
	slow, fast, release := slowAndFast(t)
	defer close(release)
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Minute}}
	got := make(chan error, 1)
	go func() {
		snap := r.Read(context.Background(), asRefs(slow, fast))
		_, err := snap.Reading(fast)
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // the slow nsqd answers only when the test ends
		t.Fatal("the fast nsqd's queue waited for the slow nsqd")
	}
}

// Pending tells which reads a queue still waits on, and its channel closes
// when the read ends: the loop waits on it instead of looking again.
func TestPendingClosesWhenTheReadEnds(t *testing.T) {
	slow, fast, release := slowAndFast(t)
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Minute}}
	snap := r.Read(t.Context(), asRefs(slow, fast))
	rd, ok := snap.(queue.Readiness)
	if !ok {
		t.Fatalf("%T does not tell readiness", snap)
	}
	if _, err := snap.Reading(fast); err != nil {
		t.Fatal(err)
	}
	if ch := rd.Pending(fast); ch != nil {
		t.Error("the fast nsqd answered: its queue still pending")
	}
	ch := rd.Pending(slow)
	if ch == nil {
		t.Fatal("the slow nsqd has not answered: its queue not pending")
	}
	close(release)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow nsqd answered: the pending channel never closed")
	}
	if ch := rd.Pending(slow); ch != nil {
		t.Error("after the answer: still pending")
	}
	if _, err := snap.Reading(slow); err != nil {
		t.Error(err)
	}
}

// TestSlowNeighboursKeepToTheirShare: a namespace naming 64 nsqds that
// answer, each a little under the timeout, takes its share of the slots
// for proven hosts, never all of them: another namespace's nsqd is read in
// every tick. With one pool for everyone, the victim waited behind the
// slow reads and timed out in most ticks.
func TestSlowNeighboursKeepToTheirShare(t *testing.T) {
	const timeout = 300 * time.Millisecond
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(stats1x))
	}))
	defer healthy.Close()
	var slowNow atomic.Bool
	slowly := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slowNow.Load() {
			select {
			case <-time.After(timeout * 2 / 3):
			case <-r.Context().Done():
			}
		}
		_, _ = w.Write([]byte(stats1x))
	})
	victim := annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(healthy.URL, "http://"), Name: "jobs", Sub: "work"}
	refs := []queue.Ref{{QueueRef: victim, Namespaces: []string{"victim"}}}
	for range 64 {
		slow := httptest.NewServer(slowly)
		defer slow.Close()
		host := strings.TrimPrefix(slow.URL, "http://")
		refs = append(refs, queue.Ref{QueueRef: annotations.QueueRef{Scheme: "nsq", Host: host, Name: "jobs", Sub: "work"}, Namespaces: []string{"noisy"}})
	}
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: timeout, Concurrency: 16}}
	// Every host answers at once at first: all are proven.
	snap := r.Read(context.Background(), refs)
	for _, q := range refs {
		if _, err := snap.Reading(q.QueueRef); err != nil {
			t.Fatalf("warming up: %v", err)
		}
	}
	slowNow.Store(true)
	failed := 0
	for range 10 {
		if _, err := r.Read(context.Background(), refs).Reading(victim); err != nil {
			failed++
			t.Logf("the victim's read failed: %v", err)
		}
	}
	if failed > 0 {
		t.Errorf("the victim's nsqd was unreadable in %d of 10 ticks", failed)
	}
}

// hungHost accepts connections and never answers, until the test ends.
func hungHost(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// One tenant's hung hosts cannot make another's healthy nsqd unreadable:
// 32 hosts that accept and never answer, or one hung nsqlookupd asked for
// 256 topics, appear beside a healthy nsqd that was read before. Each
// tick's read of the healthy queue succeeds (it failed in 6 and 2 ticks of
// 10 when every host shared one pool and a read's deadline ran while it
// waited for a slot), and no tick waits on the hung hosts for longer than
// the timeout.
func TestHungHostsDoNotStarveOthers(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(stats1x))
	}))
	defer healthy.Close()
	victim := annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(healthy.URL, "http://"), Name: "jobs", Sub: "work"}
	hungLookupd := hungHost(t)
	for _, tc := range []struct {
		name string
		refs func() []annotations.QueueRef
	}{
		{"32 hung nsqds", func() []annotations.QueueRef {
			var refs []annotations.QueueRef
			for range 32 {
				refs = append(refs, annotations.QueueRef{Scheme: "nsq", Host: hungHost(t), Name: "jobs", Sub: "work"})
			}
			return refs
		}},
		{"a hung nsqlookupd asked for 256 topics", func() []annotations.QueueRef {
			var refs []annotations.QueueRef
			for i := range 256 {
				refs = append(refs, annotations.QueueRef{Scheme: "nsqlookupd", Host: hungLookupd, Name: fmt.Sprintf("t%d", i), Sub: "work"})
			}
			return refs
		}},
	} {
		for _, proven := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/victim read before %v", tc.name, proven), func(t *testing.T) {
				r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 200 * time.Millisecond, Concurrency: 16}}
				if proven {
					if _, err := r.Read(context.Background(), asRefs(victim)).Reading(victim); err != nil {
						t.Fatalf("the healthy nsqd alone: %v", err)
					}
				}
				hung := tc.refs()
				refs := []queue.Ref{{QueueRef: victim, Namespaces: []string{"victim"}}}
				for _, q := range hung {
					refs = append(refs, queue.Ref{QueueRef: q, Namespaces: []string{"noisy"}})
				}
				failed := 0
				for range 10 {
					t0 := time.Now()
					snap := r.Read(context.Background(), refs)
					if _, err := snap.Reading(victim); err != nil {
						failed++
						t.Logf("the victim's read failed: %v", err)
					}
					for _, q := range hung {
						if _, err := snap.Reading(q); err == nil {
							t.Fatalf("a hung host's queue %s read without error", q)
						}
					}
					// Every read ends within the timeout (its wait included),
					// plus the scheduling of some hundred goroutines.
					if took := time.Since(t0); took > 3*r.Fetcher.Timeout {
						t.Errorf("a tick's reads took %s, over three times the %s timeout", took, r.Fetcher.Timeout)
					}
				}
				if failed > 0 {
					t.Errorf("the healthy nsqd was unreadable in %d of 10 ticks", failed)
				}
			})
		}
	}
}
