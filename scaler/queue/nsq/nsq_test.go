package nsq

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

const stats1x = `{"version":"1.3.0","health":"OK","start_time":1,"topics":[
 {"topic_name":"jobs","depth":0,"message_count":120,"channels":[
   {"channel_name":"work","depth":30,"in_flight_count":5,"deferred_count":2,"message_count":110,"client_count":2}]},
 {"topic_name":"fresh","depth":7,"message_count":7,"channels":[]}]}`

const statsPre1 = `{"status_code":200,"status_txt":"OK","data":{"topics":[
 {"topic_name":"jobs","depth":0,"message_count":50,"channels":[
   {"channel_name":"work","depth":10,"in_flight_count":0,"deferred_count":0,"message_count":50}]}]}}`

func TestNSQReader(t *testing.T) {
	tests := []struct {
		name           string
		body           string
		status         int
		delay          time.Duration
		topic, channel string
		want           policy.QueueReading
		wantErr        string
	}{
		{name: "1.x bare stats: depth + in flight + deferred", body: stats1x, topic: "jobs", channel: "work", want: policy.QueueReading{Backlog: 37, Waiting: 30, Arrived: 110, Consumers: 2}},
		{name: "pre-1.0 data wrapper", body: statsPre1, topic: "jobs", channel: "work", want: policy.QueueReading{Backlog: 10, Waiting: 10, Arrived: 50}},
		{name: "topic without the channel yet counts topic depth", body: stats1x, topic: "fresh", channel: "work", want: policy.QueueReading{Backlog: 7, Waiting: 7, Arrived: 7}},
		{name: "unknown topic is an empty queue", body: `{"topics":null}`, topic: "nope", channel: "work", want: policy.QueueReading{}},
		{name: "garbage JSON is an error", body: `<html>oops`, topic: "jobs", channel: "work", wantErr: "malformed answer"},
		{name: "HTTP error is an error", body: `boom`, status: 500, topic: "jobs", channel: "work", wantErr: "HTTP 500"},
		{name: "slow nsqd times out", body: stats1x, delay: 300 * time.Millisecond, topic: "jobs", channel: "work", wantErr: "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls++
				if tc.delay > 0 {
					select {
					case <-time.After(tc.delay):
					case <-r.Context().Done():
						return
					}
				}
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 100 * time.Millisecond, Clock: clocktesting.NewFakePassiveClock(at)}}
			q := annotations.QueueRef{Scheme: "nsq", Host: host, Name: tc.topic, Sub: tc.channel}
			other := annotations.QueueRef{Scheme: "nsq", Host: host, Name: "other", Sub: "c"}
			got, err := r.Read(context.Background(), asRefs(q, other)).Reading(q)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				// What a tenant sees (the Event) carries no byte of the answer.
				if strings.Contains(err.Error(), "oops") || strings.Contains(err.Error(), "boom") || strings.Contains(err.Error(), "<") {
					t.Errorf("err %q echoes the answer", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			want.At = at // the counts are as of nsqd's answer
			if got != want {
				t.Errorf("reading = %+v, want %+v", got, want)
			}
			if calls != 1 {
				t.Errorf("%d /stats calls for two queues on one nsqd, want 1", calls)
			}
		})
	}
}

func TestNSQLookupd(t *testing.T) {
	nsqd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(stats1x)) }))
	defer nsqd.Close()
	nsqdHost, nsqdPort, _ := strings.Cut(strings.TrimPrefix(nsqd.URL, "http://"), ":")
	lookupd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/stats":
			http.Error(w, "not an nsqd", http.StatusNotFound)
			return
		case r.URL.Query().Get("topic") == "broken":
			http.Error(w, "oops", http.StatusInternalServerError)
			return
		case r.URL.Query().Get("topic") != "jobs":
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"message":"TOPIC_NOT_FOUND"}`))
			return
		}
		// Two nsqds carry the topic: the same one twice sums twice.
		w.Write([]byte(`{"channels":["work"],"producers":[{"broadcast_address":"` + nsqdHost + `","http_port":` + nsqdPort + `},{"broadcast_address":"` + nsqdHost + `","http_port":` + nsqdPort + `}]}`))
	}))
	defer lookupd.Close()
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second}}
	host := strings.TrimPrefix(lookupd.URL, "http://")
	jobs := annotations.QueueRef{Scheme: "nsqlookupd", Host: host, Name: "jobs", Sub: "work"}
	unknown := annotations.QueueRef{Scheme: "nsqlookupd", Host: host, Name: "unknown", Sub: "work"}
	// Another tenant's topic that fails, and one that reads the lookupd's
	// port as if it were an nsqd: neither may fail the jobs topic.
	broken := annotations.QueueRef{Scheme: "nsqlookupd", Host: host, Name: "broken", Sub: "work"}
	asNSQD := annotations.QueueRef{Scheme: "nsq", Host: host, Name: "jobs", Sub: "work"}
	snap := r.Read(context.Background(), asRefs(jobs, unknown, broken, asNSQD))
	if got, err := snap.Reading(jobs); err != nil || got.Backlog != 74 {
		t.Errorf("jobs via lookupd = %+v, %v; want backlog 74 (37 on each of 2 nsqds)", got, err)
	}
	for _, q := range []annotations.QueueRef{broken, asNSQD} {
		if _, err := snap.Reading(q); err == nil {
			t.Errorf("%s: read without error, want the failure", q)
		}
	}
	if got, err := snap.Reading(unknown); err != nil || got.Backlog != 0 {
		t.Errorf("unknown topic via lookupd = %+v, %v; want an empty queue", got, err)
	}
	// The next tick names other queues: the same reader reads those, and
	// no longer the ones before.
	direct := annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(nsqd.URL, "http://"), Name: "jobs", Sub: "work"}
	snap = r.Read(context.Background(), asRefs(direct))
	if got, err := snap.Reading(direct); err != nil || got.Backlog != 37 {
		t.Errorf("jobs on the nsqd named = %+v, %v; want backlog 37", got, err)
	}
	if got, err := snap.Reading(jobs); err == nil {
		t.Errorf("jobs via lookupd on a tick that does not name it = %+v, want not read", got)
	}
	snap = r.Read(context.Background(), asRefs(jobs))
	if got, err := snap.Reading(jobs); err != nil || got.Backlog != 74 {
		t.Errorf("jobs via lookupd named again = %+v, %v; want backlog 74", got, err)
	}
}

// readAll reads refs, waits until every one is read, and returns how many
// failed.
func readAll(r *NSQReader, refs ...annotations.QueueRef) int {
	s := r.Read(context.Background(), asRefs(refs...))
	failed := 0
	for _, q := range refs {
		if _, err := s.Reading(q); err != nil {
			failed++
		}
	}
	return failed
}

// The read metrics' host label comes from tenants: there are never more
// than queue.MaxHostLabels hosts, and a host's series go once no read has named it
// for queue.ForgetAfter.
func TestReadMetricsHostsBounded(t *testing.T) {
	nsqd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(stats1x)) }))
	defer nsqd.Close()
	m := metrics.NewMetrics(prometheus.NewRegistry())
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second, Metrics: m, Clock: clk}}
	host := strings.TrimPrefix(nsqd.URL, "http://")
	ref := func(h string) annotations.QueueRef {
		return annotations.QueueRef{Scheme: "nsq", Host: h, Name: "jobs", Sub: "work"}
	}
	if n := readAll(r, ref(host)); n != 0 {
		t.Fatalf("%d reads of the nsqd failed", n)
	}
	// Many hosts nobody serves (refused at once on closed ports of 127.0.0.1).
	var refs []annotations.QueueRef
	for i := range queue.MaxHostLabels + 50 {
		refs = append(refs, ref(fmt.Sprintf("127.0.0.1:%d", 1+i)))
	}
	if n := readAll(r, refs...); n != len(refs) {
		t.Errorf("%d of %d reads of closed ports failed, want all", n, len(refs))
	}
	if n := testutil.CollectAndCount(m.QueueReadLatency); n != queue.MaxHostLabels+1 {
		t.Errorf("%d latency series for %d hosts, want %d (+ other)", n, len(refs)+1, queue.MaxHostLabels)
	}
	if got := testutil.ToFloat64(m.QueueReadErrors.WithLabelValues("other")); got != 51 {
		t.Errorf("errors counted as other = %v, want 51", got)
	}
	clk.SetTime(clk.Now().Add(queue.ForgetAfter + time.Second))
	if n := readAll(r, ref(host)); n != 0 {
		t.Fatalf("%d reads of the nsqd failed", n)
	}
	if n := testutil.CollectAndCount(m.QueueReadLatency); n != 2 { // the host, and "other"
		t.Errorf("%d latency series once only one host is named, want 2", n)
	}
}

// An nsqd that an nsqlookupd stops announcing while it holds the topic's
// messages still counts until it holds none; unreadable, it holds the member.
func TestVanishedProducerStillCounts(t *testing.T) {
	var mu sync.Mutex
	backlogB := `{"topics":[{"topic_name":"jobs","depth":0,"message_count":50,"channels":[{"channel_name":"work","depth":40,"in_flight_count":0,"deferred_count":0,"message_count":50}]}]}`
	empty := `{"topics":[{"topic_name":"jobs","depth":0,"message_count":50,"channels":[{"channel_name":"work","depth":0,"in_flight_count":0,"deferred_count":0,"message_count":50}]}]}`
	bBody := backlogB
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(empty)) }))
	defer a.Close()
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write([]byte(bBody))
	}))
	defer b.Close()
	producer := func(u string) string {
		h, p, _ := strings.Cut(strings.TrimPrefix(u, "http://"), ":")
		return `{"broadcast_address":"` + h + `","http_port":` + p + `}`
	}
	announce := producer(a.URL) + "," + producer(b.URL)
	lookupd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write([]byte(`{"producers":[` + announce + `]}`))
	}))
	defer lookupd.Close()
	q := annotations.QueueRef{Scheme: "nsqlookupd", Host: strings.TrimPrefix(lookupd.URL, "http://"), Name: "jobs", Sub: "work"}
	clk := clocktesting.NewFakePassiveClock(time.Now())
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second, Clock: clk}}
	refs := []queue.Ref{{QueueRef: q, Namespaces: []string{"tenant"}, Hold: 30 * time.Second}}
	read := func() (policy.QueueReading, error) {
		return r.Read(context.Background(), refs).Reading(q)
	}
	step := func(name string, change func(), wantBacklog int64, wantErr bool) {
		t.Helper()
		mu.Lock()
		change()
		mu.Unlock()
		got, err := read()
		if (err != nil) != wantErr || (err == nil && got.Backlog != wantBacklog) {
			t.Errorf("%s: reading %+v, err %v; want backlog %d, error %v", name, got, err, wantBacklog, wantErr)
		}
	}
	step("both announced", func() {}, 40, false)
	step("b no longer announced, still holding 40", func() { announce = producer(a.URL) }, 40, false)
	step("the lookupd forgets the topic", func() { announce = "" }, 40, false)
	step("b drained: forgotten", func() { bBody = empty }, 0, false)
	step("b holds messages again but is not announced: not read", func() { bBody = backlogB }, 0, false)
	// A vanished nsqd that cannot be read holds the member.
	step("announced again", func() { announce = producer(a.URL) + "," + producer(b.URL) }, 40, false)
	b.Close()
	step("b gone while holding messages", func() { announce = producer(a.URL) }, 0, true)
	// A phantom: b never comes back. It holds the member for its scale-down
	// delay (Hold), then is forgotten and the topic is read from what the
	// lookupd names.
	step("b still gone within the hold", func() { clk.SetTime(clk.Now().Add(29 * time.Second)) }, 0, true)
	step("b gone past the hold: forgotten", func() { clk.SetTime(clk.Now().Add(2 * time.Second)) }, 0, false)
	step("and stays forgotten", func() {}, 0, false)
	// A second namespace names the topic with a 5 s scale-down delay: the
	// shortest delay of the members bounds the hold.
	refs = append(refs, queue.Ref{QueueRef: q, Namespaces: []string{"quick"}, Hold: 5 * time.Second})
	step("announced again, two members", func() { announce = producer(a.URL) + "," + producer(b.URL) }, 0, true)
	step("b gone again", func() { announce = producer(a.URL) }, 0, true)
	step("b still gone within the shorter hold", func() { clk.SetTime(clk.Now().Add(4 * time.Second)) }, 0, true)
	step("b gone past the shorter hold: forgotten", func() { clk.SetTime(clk.Now().Add(2 * time.Second)) }, 0, false)
}

// asRefs is qs as one namespace's Deployments name them.
func asRefs(qs ...annotations.QueueRef) []queue.Ref {
	out := make([]queue.Ref, len(qs))
	for i, q := range qs {
		out[i] = queue.Ref{QueueRef: q, Namespaces: []string{"tenant"}}
	}
	return out
}

// The nsqds a lookup announces count toward its namespace's host cap (as
// last announced): past it, they are not read and the lookup's members are
// told why; a namespace over its cap that shares a lookup with another
// does not make the other lose it.
func TestAnnouncedNSQDsCountTowardTheCap(t *testing.T) {
	var hits atomic.Int64
	stats := `{"topics":[{"topic_name":"jobs","depth":0,"message_count":5,"channels":[{"channel_name":"work","depth":5,"message_count":5}]}]}`
	var announce []string
	for range 3 {
		nsqd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			hits.Add(1)
			_, _ = w.Write([]byte(stats))
		}))
		defer nsqd.Close()
		h, p, _ := strings.Cut(strings.TrimPrefix(nsqd.URL, "http://"), ":")
		announce = append(announce, `{"broadcast_address":"`+h+`","http_port":`+p+`}`)
	}
	lookupd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"producers":[` + strings.Join(announce, ",") + `]}`))
	}))
	defer lookupd.Close()
	q := annotations.QueueRef{Scheme: "nsqlookupd", Host: strings.TrimPrefix(lookupd.URL, "http://"), Name: "jobs", Sub: "work"}
	direct := func(i int) queue.Ref { // hosts that refuse connections: only counted
		return queue.Ref{QueueRef: annotations.QueueRef{Scheme: "nsq", Host: fmt.Sprintf("127.0.0.1:%d", 1+i), Name: "t", Sub: "c"}, Namespaces: []string{"crowded"}}
	}
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second}, HostsPerNamespace: 4}
	read := func(refs ...queue.Ref) (policy.QueueReading, int64, error) {
		before := hits.Load()
		got, err := r.Read(context.Background(), refs).Reading(q)
		return got, hits.Load() - before, err
	}

	// The lookup and its 3 nsqds: 4 hosts, within the cap.
	alone := queue.Ref{QueueRef: q, Namespaces: []string{"tenant"}}
	for i := range 2 {
		if got, n, err := read(alone); err != nil || got.Backlog != 15 || n != 3 {
			t.Fatalf("read %d within the cap: backlog %d, %v, %d nsqds read; want 15 from 3", i, got.Backlog, err, n)
		}
	}
	// A namespace that also names two nsqds itself: 6 hosts. The first tick
	// reads what it does not know yet; from then on its nsqds are not read.
	crowded := queue.Ref{QueueRef: q, Namespaces: []string{"crowded"}}
	r = &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second}, HostsPerNamespace: 4}
	if got, n, err := read(crowded, direct(0), direct(1)); err != nil || got.Backlog != 15 || n != 3 {
		t.Errorf("first read: backlog %d, %v, %d nsqds read; want 15 from the 3 announced (not known yet)", got.Backlog, err, n)
	}
	_, n, err := read(crowded, direct(0), direct(1))
	if err == nil || !strings.Contains(err.Error(), "past 4 queue hosts") || n != 0 {
		t.Errorf("past the cap: %v, %d nsqds read; want an error naming the cap and none read", err, n)
	}
	// Shared with a namespace that has room: read, charged to that one.
	shared := queue.Ref{QueueRef: q, Namespaces: []string{"crowded", "tenant"}}
	if got, n, err := read(shared, direct(0), direct(1)); err != nil || got.Backlog != 15 || n != 3 {
		t.Errorf("shared with a namespace that has room: backlog %d, %v, %d nsqds read; want 15 from 3", got.Backlog, err, n)
	}
	// Hosts the namespace's queues of other schemes take count too, as
	// queue.Sources tells them: two RabbitMQ virtual hosts and the lookup
	// with its 3 nsqds make 6.
	r = &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second}, HostsPerNamespace: 4}
	srcs := queue.NewSources(map[string]queue.Source{"nsq": r, "nsqlookupd": r, "rabbitmq": unread{}})
	vhost := func(i int) queue.Ref {
		return queue.Ref{QueueRef: annotations.QueueRef{Scheme: "rabbitmq", Host: "127.0.0.1:1", Name: "q", Sub: fmt.Sprint("v", i)}, Namespaces: []string{"crowded"}}
	}
	for i, want := range []int64{3, 0} {
		before := hits.Load()
		_, err := srcs.Read(context.Background(), []queue.Ref{crowded, vhost(0), vhost(1)}).Reading(q)
		if n := hits.Load() - before; n != want || (i == 1) != (err != nil) {
			t.Errorf("beside two RabbitMQ virtual hosts, read %d: %v, %d nsqds read; want %d read, an error from the second on", i, err, n, want)
		}
	}
}

// unread is a Source that reads nothing.
type unread struct{}

func (unread) Read(context.Context, []queue.Ref) policy.Readings { return nil }

// Held reads the channel's clients only (the request names the topic and
// channel), by the host name each reported and by an address one client
// alone connects from; names that are not host names are never keys.
func TestNSQHeld(t *testing.T) {
	const body = `{"topics":[{"topic_name":"jobs","channels":[{"channel_name":"work","clients":[
	 {"hostname":"consumer-7d9f-abcde","remote_address":"10.0.0.5:40000","in_flight_count":3},
	 {"hostname":"consumer-7d9f-fghij","remote_address":"10.0.0.6:40001","in_flight_count":0},
	 {"hostname":"shared-a","remote_address":"10.0.0.9:1","in_flight_count":1},
	 {"hostname":"shared-b","remote_address":"10.0.0.9:2","in_flight_count":2},
	 {"hostname":"<script>","remote_address":"not-an-address","in_flight_count":9}]},
	 {"channel_name":"other","clients":[{"hostname":"elsewhere","remote_address":"10.0.0.7:1","in_flight_count":5}]}]}]}`
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		w.Write([]byte(body))
	}))
	defer srv.Close()
	r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: time.Second, Clock: clocktesting.NewFakePassiveClock(time.Now())}}
	h, err := r.Held(context.Background(), "team-a", annotations.QueueRef{Scheme: "nsq", Host: strings.TrimPrefix(srv.URL, "http://"), Name: "jobs", Sub: "work"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(query, "topic=jobs") || !strings.Contains(query, "channel=work") || !strings.Contains(query, "include_clients=true") {
		t.Errorf("query %q: want the topic, the channel and their clients only", query)
	}
	for _, c := range []struct {
		hostname, addr string
		want           int64
		seen           bool
	}{
		{"consumer-7d9f-abcde", "", 3, true},
		{"consumer-7d9f-fghij", "", 0, true},
		{"pod-by-address", "10.0.0.5", 3, true},
		{"pod-on-a-shared-address", "10.0.0.9", 0, false},
		{"elsewhere", "10.0.0.7", 0, false},
		{"<script>", "", 0, false},
	} {
		got, seen := h.Of(c.hostname, c.addr)
		if got != c.want || seen != c.seen {
			t.Errorf("Of(%q, %q) = %d, %v; want %d, %v", c.hostname, c.addr, got, seen, c.want, c.seen)
		}
	}
}
