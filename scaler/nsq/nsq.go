// Package nsq reads queue backlogs from NSQ for the scaler: one /stats per
// nsqd per tick however many groups name it, nsqlookupd resolution, bounded
// decoding, and the tenant-safe HTTP client (no redirects, no proxy, refused
// addresses checked at dial time) whose errors say a class, never a byte of
// the answer.
package nsq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/policy"
)

// nsqStats is the part of nsqd's GET /stats?format=json that we read. nsqd
// 1.x returns it bare; before 1.0 it was wrapped in {"data": ...}.
type nsqStats struct {
	Data   *nsqStats  `json:"data"`
	Topics []nsqTopic `json:"topics"`

	byName map[string]*nsqTopic // Topics by name, built once per read
	at     time.Time            // when the answer began to arrive
}

func (st *nsqStats) index() *nsqStats {
	st.byName = make(map[string]*nsqTopic, len(st.Topics))
	for i := range st.Topics {
		st.byName[st.Topics[i].Name] = &st.Topics[i]
	}
	return st
}

type nsqTopic struct {
	Name         string       `json:"topic_name"`
	Depth        int64        `json:"depth"`
	MessageCount int64        `json:"message_count"`
	Channels     []nsqChannel `json:"channels"`
}

type nsqChannel struct {
	Name         string `json:"channel_name"`
	Depth        int64  `json:"depth"`
	InFlight     int64  `json:"in_flight_count"`
	Deferred     int64  `json:"deferred_count"`
	MessageCount int64  `json:"message_count"`
	ClientCount  int64  `json:"client_count"`
}

// NSQReader reads nsqd /stats, once per nsqd per Read however many queues
// name it, and resolves nsqlookupd addresses to the nsqds that carry a topic.
type NSQReader struct {
	Client  *http.Client
	Timeout time.Duration // per request
	// Metrics, when set, records each request's latency and failures, by
	// host for at most maxHostLabels hosts (the rest as "other"); a host no
	// read has named for forgetAfter loses its series.
	Metrics *metrics.Metrics
	// Clock, when set, times what is forgotten (tests); the real clock otherwise.
	Clock clock.PassiveClock
	// MaxBytes bounds one answer (DefaultMaxBytes when 0); Concurrency, the
	// requests in flight over every read (DefaultConcurrency when 0).
	MaxBytes    int64
	Concurrency int
	// VanishedHold bounds how long an nsqd a lookupd stopped announcing is
	// still read for a topic (DefaultVanishedHold when 0).
	VanishedHold time.Duration

	semOnce sync.Once
	// sem bounds the requests in flight to proven hosts, probation those to
	// every other host.
	sem, probation chan struct{}

	mu      sync.Mutex // guards labeled, vanished, announced, hostSem and proven
	hostSem map[string]*hostSlots
	// proven are hosts whose last read succeeded, and when.
	proven  map[string]time.Time
	labeled map[string]time.Time // host -> last read
	// vanished are nsqds an nsqlookupd stopped announcing for a topic
	// while they may still hold its messages, with when each was first
	// missed: read until they hold none, for at most VanishedHold.
	vanished map[lookupKey]map[string]time.Time
	// announced are the nsqds each lookup named last time.
	announced map[lookupKey]announcement
}

type announcement struct {
	hosts map[string]bool
	at    time.Time
}

// DefaultVanishedHold is the default scale-down delay: a member is never
// held by an nsqd that left its lookupd for longer than it waits before a
// shrink.
const DefaultVanishedHold = annotations.DefaultScaleDownDelay

// forgetAfter is how long a host or lookup no read names is remembered
// (a read of only the queues new on a tick names few of them).
const forgetAfter = 10 * time.Minute

// maxHostLabels bounds the host label values of the read metrics: hosts
// come from tenants' annotations and nsqlookupd answers.
const maxHostLabels = 256

// Snapshot is one tick's reading of every nsqd that some queue names. Its
// reads run in the background: Reading waits only for the hosts its queue
// needs, so a slow nsqd or nsqlookupd delays only the groups that read it.
type Snapshot struct {
	mu sync.Mutex // guards stats
	// stats by nsqd host:port; each fetch is started once per Read.
	stats map[string]*fetch
	// lookups by nsqlookupd host:port and topic: one tenant's failed lookup
	// (or an nsq:// read of a lookupd's port) never fails another tenant's
	// topic on the same nsqlookupd.
	lookups map[lookupKey]*lookupFetch
}

// fetch is one nsqd's /stats; st and err are set before done closes.
type fetch struct {
	done chan struct{}
	st   *nsqStats
	err  error
}

// lookupFetch is one nsqlookupd topic's nsqds (the announced ones and those
// that vanished while holding its messages); set before done closes.
type lookupFetch struct {
	done      chan struct{}
	producers []string
	err       error
}

type lookupKey struct{ lookupd, topic string }

// Read starts reading what refs need and returns at once; each Reading
// waits for its own hosts, each read bounded by Timeout.
func (r *NSQReader) Read(ctx context.Context, refs []annotations.QueueRef) policy.Readings {
	s := &Snapshot{stats: map[string]*fetch{}, lookups: map[lookupKey]*lookupFetch{}}
	direct := map[string]map[string]bool{} // nsqd host -> its topics named by nsq:// queues
	lookedUp := map[string]bool{}          // every topic looked up: any nsqd may carry them
	keys := map[lookupKey]bool{}
	for _, q := range refs {
		if q.Scheme == "nsqlookupd" {
			keys[lookupKey{q.Host, q.Name}] = true
			lookedUp[q.Name] = true
			continue
		}
		if direct[q.Host] == nil {
			direct[q.Host] = map[string]bool{}
		}
		direct[q.Host][q.Name] = true
	}
	r.prune()
	r.expireLookups(keys)
	start := func(host string) *fetch {
		s.mu.Lock()
		defer s.mu.Unlock()
		if f, ok := s.stats[host]; ok {
			return f
		}
		mine := direct[host]
		topics := func(topic string) bool { return mine[topic] || lookedUp[topic] }
		f := &fetch{done: make(chan struct{})}
		s.stats[host] = f
		go func() {
			defer close(f.done)
			t0 := time.Now()
			st, err := r.stats(ctx, host, topics)
			r.observe(host, time.Since(t0), err)
			if err != nil {
				f.err = readError("nsqd", host, err)
				return
			}
			f.st = st
		}()
		return f
	}
	for host := range direct {
		start(host)
	}
	for k := range keys {
		lf := &lookupFetch{done: make(chan struct{})}
		s.lookups[k] = lf
		go func() {
			defer close(lf.done)
			t0 := time.Now()
			ps, err := r.lookup(ctx, k.lookupd, k.topic)
			r.observe(k.lookupd, time.Since(t0), err)
			if err != nil {
				lf.err = readError("nsqlookupd", k.lookupd, err)
				return
			}
			ps, vanished := r.keepVanished(k, ps)
			fetches := map[string]*fetch{}
			for _, p := range ps {
				fetches[p] = start(p)
			}
			for h := range vanished {
				<-fetches[h].done
			}
			r.forgetDrained(k, vanished, fetches)
			lf.producers = ps
		}()
	}
	return s
}

// expireLookups forgets what lookups no read has named for forgetAfter.
func (r *NSQReader) expireLookups(keys map[lookupKey]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vanished == nil {
		r.vanished, r.announced = map[lookupKey]map[string]time.Time{}, map[lookupKey]announcement{}
	}
	now := r.now()
	for k, a := range r.announced {
		if !keys[k] && now.Sub(a.at) > forgetAfter {
			delete(r.announced, k)
			delete(r.vanished, k)
		}
	}
}

// keepVanished adds to a successful lookup the nsqds it named before but
// not now (one that left, or a topic the lookupd forgot): their messages
// still wait, so they are read until they hold none of the topic; one that
// cannot be read holds the member rather than counting zero, but only for
// VanishedHold: an nsqd that registered for a topic on a shared lookupd and
// went away (a phantom) cannot hold the topic's readers for longer. It
// returns the producers to read and the vanished ones among them.
func (r *NSQReader) keepVanished(k lookupKey, ps []string) ([]string, map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	named := map[string]bool{}
	for _, p := range ps {
		named[p] = true
	}
	gone := r.vanished[k]
	for p := range r.announced[k].hosts {
		if _, ok := gone[p]; !named[p] && !ok {
			if gone == nil {
				gone = map[string]time.Time{}
			}
			gone[p] = now
		}
	}
	hold := r.VanishedHold
	if hold <= 0 {
		hold = DefaultVanishedHold
	}
	reading := map[string]bool{}
	for p, since := range gone {
		if named[p] || len(ps) >= maxProducers || now.Sub(since) > hold {
			delete(gone, p) // back, no room to track it, or held long enough
			continue
		}
		ps = append(ps, p)
		reading[p] = true
	}
	r.announced[k] = announcement{named, r.now()}
	if len(gone) == 0 {
		delete(r.vanished, k)
		return ps, nil
	}
	r.vanished[k] = gone
	return ps, reading
}

// forgetDrained stops reading the vanished nsqds of a lookup that hold none
// of its topic.
func (r *NSQReader) forgetDrained(k lookupKey, vanished map[string]bool, fetches map[string]*fetch) {
	if len(vanished) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for h := range vanished {
		f := fetches[h]
		if f.err != nil {
			continue // unreadable: keep holding
		}
		if t, ok := f.st.byName[k.topic]; !ok || topicBacklog(t) == 0 {
			delete(r.vanished[k], h)
		}
	}
	if len(r.vanished[k]) == 0 {
		delete(r.vanished, k) // also when a newer read replaced it
	}
}

// topicBacklog is every message of a topic on one nsqd, in any channel.
func topicBacklog(t *nsqTopic) int64 {
	n := t.Depth
	for _, c := range t.Channels {
		n += c.Depth + c.InFlight + c.Deferred
	}
	return n
}

func (r *NSQReader) observe(host string, d time.Duration, err error) {
	if r.Metrics == nil {
		return
	}
	r.mu.Lock()
	if _, ok := r.labeled[host]; ok || len(r.labeled) < maxHostLabels {
		if r.labeled == nil {
			r.labeled = map[string]time.Time{}
		}
		r.labeled[host] = r.now()
	} else {
		host = "other"
	}
	r.mu.Unlock()
	r.Metrics.QueueReadLatency.WithLabelValues(host).Observe(d.Seconds())
	if err != nil {
		r.Metrics.QueueReadErrors.WithLabelValues(host).Inc()
	}
}

func (r *NSQReader) now() time.Time {
	if r.Clock == nil {
		return time.Now()
	}
	return r.Clock.Now()
}

// prune deletes the read metrics of hosts that no read has named for
// forgetAfter.
func (r *NSQReader) prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for host, at := range r.proven {
		if now.Sub(at) > forgetAfter {
			delete(r.proven, host)
		}
	}
	if r.Metrics == nil {
		return
	}
	for host, at := range r.labeled {
		if now.Sub(at) > forgetAfter {
			r.Metrics.QueueReadLatency.DeleteLabelValues(host)
			r.Metrics.QueueReadErrors.DeleteLabelValues(host)
			delete(r.labeled, host)
		}
	}
}

// Reading sums a queue over its nsqds, waiting for their reads. Any nsqd
// that could not be read makes the whole reading fail: a partial sum would
// look like a shrinking backlog.
func (s *Snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	hosts := []string{q.Host}
	if q.Scheme == "nsqlookupd" {
		lf, ok := s.lookups[lookupKey{q.Host, q.Name}]
		if !ok {
			return policy.QueueReading{}, fmt.Errorf("nsqlookupd %s: not read", q.Host)
		}
		<-lf.done
		if lf.err != nil {
			return policy.QueueReading{}, lf.err
		}
		hosts = lf.producers
	}
	var out policy.QueueReading
	for _, h := range hosts {
		s.mu.Lock()
		f, ok := s.stats[h]
		s.mu.Unlock()
		if !ok {
			return policy.QueueReading{}, fmt.Errorf("nsqd %s: not read", h)
		}
		<-f.done
		if f.err != nil {
			return policy.QueueReading{}, f.err
		}
		if f.st.at.After(out.At) {
			out.At = f.st.at
		}
		t, ok := f.st.byName[q.Name]
		if !ok {
			continue // no such topic on this nsqd: nothing waits there
		}
		i := slices.IndexFunc(t.Channels, func(c nsqChannel) bool { return c.Name == q.Sub })
		if i < 0 {
			// No channel yet: messages wait in the topic.
			out.Backlog += t.Depth
			out.Waiting += t.Depth
			out.Arrived += t.MessageCount
			continue
		}
		c := t.Channels[i]
		out.Backlog += c.Depth + c.InFlight + c.Deferred
		out.Waiting += c.Depth
		out.Arrived += c.MessageCount
		out.Consumers = max(out.Consumers, c.ClientCount)
	}
	return out, nil
}

// get fetches u from host and decodes its answer as it streams in. At
// most Concurrency requests are in flight to hosts whose last read
// succeeded, at most perHostSlots to any one host, and every other host (new,
// or failing: hung, refusing, garbled) waits in a pool of its own, as large:
// hosts that hang, however many a tenant names, wait on each other and
// never take the slots a proven host needs. A proven host's
// read waits at most Timeout for its slots, and its Timeout runs from when
// it is sent; any other host's read has Timeout for both, as a host that
// has not answered yet must not hold up a tick for longer.
func (r *NSQReader) get(ctx context.Context, host, u string, decode func(*json.Decoder) error) (err error) {
	proven := r.isProven(host)
	if !proven {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	release, err := r.acquire(ctx, host, proven)
	if err != nil {
		return fmt.Errorf("waiting for a read slot for %s: %w", host, err)
	}
	defer release()
	defer func() { r.noteResult(host, err == nil) }()
	if proven {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	c := r.Client
	if c == nil {
		c = defaultQueueClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The body is the server's, which a tenant may control: never read.
		return &httpError{status: resp.StatusCode}
	}
	limit := r.maxBytes()
	body := &countingReader{r: io.LimitReader(resp.Body, limit+1)}
	err = decode(json.NewDecoder(body))
	switch {
	case body.n > limit:
		return fmt.Errorf("%s: %w: more than %d bytes", u, errTooLarge, limit)
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("reading %s: %w", u, ctx.Err()) // the timeout, whatever the body read said
	case err != nil:
		return fmt.Errorf("decoding %s: %w", u, err)
	}
	return nil
}

// DefaultMaxBytes bounds one answer when MaxBytes is 0: a /stats of 2,000
// topics is about 1 MB.
const DefaultMaxBytes = 8 << 20

// DefaultConcurrency bounds the requests in flight when Concurrency is 0.
const DefaultConcurrency = 16

func (r *NSQReader) maxBytes() int64 {
	if r.MaxBytes > 0 {
		return r.MaxBytes
	}
	return DefaultMaxBytes
}

// perHostSlots bounds the requests in flight to one host (an nsqlookupd
// asked for many topics).
const perHostSlots = 2

// acquire takes a slot of host's own and one of the pool host belongs to
// (proven hosts', or the others'), waiting at most Timeout; release gives
// both back.
func (r *NSQReader) acquire(ctx context.Context, host string, proven bool) (release func(), err error) {
	r.semOnce.Do(func() {
		n := r.Concurrency
		if n <= 0 {
			n = DefaultConcurrency
		}
		r.sem, r.probation = make(chan struct{}, n), make(chan struct{}, n)
	})
	pool := r.probation
	if proven {
		pool = r.sem
	}
	r.mu.Lock()
	if r.hostSem == nil {
		r.hostSem = map[string]*hostSlots{}
	}
	hs := r.hostSem[host]
	if hs == nil {
		hs = &hostSlots{c: make(chan struct{}, perHostSlots)}
		r.hostSem[host] = hs
	}
	hs.users++
	r.mu.Unlock()
	done := func() {
		r.mu.Lock()
		if hs.users--; hs.users == 0 {
			delete(r.hostSem, host) // bounded by the hosts being read now
		}
		r.mu.Unlock()
	}
	wait, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	select {
	case hs.c <- struct{}{}:
	case <-wait.Done():
		done()
		return nil, wait.Err()
	}
	select {
	case pool <- struct{}{}:
	case <-wait.Done():
		<-hs.c
		done()
		return nil, wait.Err()
	}
	return func() { <-pool; <-hs.c; done() }, nil
}

func (r *NSQReader) isProven(host string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.proven[host]
	return ok
}

// noteResult records whether host's last read succeeded, for the pool its
// next read waits in; a proven host no read names is forgotten after
// forgetAfter (prune).
func (r *NSQReader) noteResult(host string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case ok && len(r.proven) < maxProvenHosts:
		if r.proven == nil {
			r.proven = map[string]time.Time{}
		}
		r.proven[host] = r.now()
	case !ok:
		delete(r.proven, host)
	}
}

// maxProvenHosts bounds the hosts remembered as proven; past it, a host
// that answers still waits in the probation pool.
const maxProvenHosts = 4096

// hostSlots are the requests in flight to one host; users counts the reads
// holding or waiting for them.
type hostSlots struct {
	c     chan struct{}
	users int
}

// defaultQueueClient serves readers built without a client (tests).
var defaultQueueClient = NewQueueClient(Policy{Nets: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}})

// maxProducers bounds the nsqds one lookup may name, each a request a tick.
const maxProducers = 64

type httpError struct{ status int }

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d", e.status) }

func (r *NSQReader) stats(ctx context.Context, host string, topics func(string) bool) (*nsqStats, error) {
	var st *nsqStats
	u := "http://" + host + "/stats?format=json&include_clients=false&include_mem=false"
	var at time.Time
	err := r.get(ctx, host, u, func(dec *json.Decoder) (err error) {
		at = r.now() // nsqd counted as it answered: the rates are per this time, not the tick's
		st, err = decodeStats(dec, topics)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nsqd %s stats: %w", host, err)
	}
	st.at = at
	return st.index(), nil
}

func (r *NSQReader) lookup(ctx context.Context, lookupd, topic string) ([]string, error) {
	var ps []producer
	err := r.get(ctx, lookupd, "http://"+lookupd+"/lookup?topic="+url.QueryEscape(topic), func(dec *json.Decoder) (err error) {
		ps, err = decodeLookup(dec)
		return err
	})
	var he *httpError
	if errors.As(err, &he) && he.status == http.StatusNotFound {
		return nil, nil // no nsqd carries the topic yet: an empty queue
	}
	if err != nil {
		return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
	}
	var out []string
	for _, p := range ps {
		a, err := producerAddr(p.Broadcast, p.HTTPPort)
		if err != nil {
			return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
		}
		out = append(out, a)
	}
	return out, nil
}
