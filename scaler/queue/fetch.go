package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/scaler/metrics"
)

// Fetcher runs every source's requests under one set of bounds. A request
// takes a slot of its host's own (perHostSlots), one of the share of a
// namespace that names the host (PerNamespace), and one of a pool: hosts
// whose last read succeeded share Concurrency slots, every other host (new,
// or failing: hung, refusing, garbled) waits in a pool of its own, as
// large. So hosts that hang, however many a tenant names, wait on each
// other and on their namespace's share, and never take the slots another
// namespace's reads need. A proven host's read waits at most Timeout for
// its slots, and its Timeout runs from when it is sent; any other host's
// read has Timeout for both, as a host that has not answered yet must not
// hold up a tick for longer.
type Fetcher struct {
	Client  *http.Client
	Timeout time.Duration // per request
	// Metrics, when set, records each request's latency and failures, by
	// host for at most MaxHostLabels hosts (the rest as "other"); a host no
	// read has named for ForgetAfter loses its series.
	Metrics *metrics.Metrics
	// Clock, when set, times what is forgotten (tests); the real clock otherwise.
	Clock clock.PassiveClock
	// MaxBytes bounds one answer (DefaultMaxBytes when 0); Concurrency,
	// the requests in flight to proven hosts, and again to the others
	// (DefaultConcurrency when 0); PerNamespace, the requests in flight
	// for one namespace (DefaultPerNamespace when 0).
	MaxBytes     int64
	Concurrency  int
	PerNamespace int
	// Credentials, when set, gives the credentials of queues that name a
	// Secret; unset, such queues are unreadable (ErrNoSecrets).
	Credentials CredentialSource

	once sync.Once
	// sem bounds the requests in flight to proven hosts, probation those to
	// every other host.
	sem, probation chan struct{}

	mu     sync.Mutex // guards the maps below
	hosts  map[string]*slots
	shares map[string]*slots
	// proven are hosts whose last read succeeded, and when.
	proven  map[string]time.Time
	labeled map[string]time.Time // host -> last read
}

// DefaultMaxBytes bounds one answer when MaxBytes is 0: a /stats of 2,000
// NSQ topics is about 1 MB.
const DefaultMaxBytes = 8 << 20

// DefaultConcurrency bounds the requests in flight when Concurrency is 0.
const DefaultConcurrency = 16

// DefaultPerNamespace bounds one namespace's requests in flight when
// PerNamespace is 0: a quarter of the pool, so that no namespace alone
// fills it.
const DefaultPerNamespace = 4

// ForgetAfter is how long a host no read names is remembered (proven, and
// its metric series).
const ForgetAfter = 10 * time.Minute

// MaxHostLabels bounds the host label values of the read metrics: hosts
// come from tenants' annotations and servers' answers.
const MaxHostLabels = 256

// maxProvenHosts bounds the hosts remembered as proven; past it, a host
// that answers still waits in the probation pool.
const maxProvenHosts = 4096

// perHostSlots bounds the requests in flight to one host.
const perHostSlots = 2

// maxCandidates bounds the namespaces whose shares one request may wait on.
const maxCandidates = 64

// slots are requests in flight; users counts the reads holding or waiting
// for them, so that an entry lives only while it is used.
type slots struct {
	c     chan struct{}
	users int
}

// Now is the fetcher's clock.
func (f *Fetcher) Now() time.Time {
	if f.Clock == nil {
		return time.Now()
	}
	return f.Clock.Now()
}

// MaxAnswer is the bound on one answer.
func (f *Fetcher) MaxAnswer() int64 {
	if f.MaxBytes > 0 {
		return f.MaxBytes
	}
	return DefaultMaxBytes
}

// Do runs read for host under the bounds, charged to one of namespaces
// (the one with a free slot; none: a share of its own), with read's
// context ending Timeout after it is called. Its outcome decides the pool
// host waits in next, and goes to the metrics.
func (f *Fetcher) Do(ctx context.Context, namespaces []string, host string, read func(ctx context.Context) error) (err error) {
	proven := f.isProven(host)
	if !proven {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout)
		defer cancel()
	}
	release, err := f.acquire(ctx, namespaces, host, proven)
	if err != nil {
		f.observe(host, 0, err)
		return fmt.Errorf("waiting for a read slot for %s: %w", host, err)
	}
	defer release()
	if proven {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout)
		defer cancel()
	}
	t0 := f.Now()
	err = read(ctx)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err) // the timeout, whatever the read said
	}
	f.noteResult(host, err == nil)
	f.observe(host, f.Now().Sub(t0), err)
	return err
}

// GetJSON fetches u from host under the bounds of Do and decodes its
// answer as it streams in, never past MaxAnswer bytes. prepare, when set,
// adds to the request (credentials). An answer other than 200 is a
// *StatusError; its body is never read.
func (f *Fetcher) GetJSON(ctx context.Context, namespaces []string, host, u string, prepare func(*http.Request), decode func(*json.Decoder) error) error {
	return f.Do(ctx, namespaces, host, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		if prepare != nil {
			prepare(req)
		}
		c := f.Client
		if c == nil {
			c = defaultClient
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &StatusError{Status: resp.StatusCode}
		}
		limit := f.MaxAnswer()
		body := &countingReader{r: io.LimitReader(resp.Body, limit+1)}
		err = decode(json.NewDecoder(body))
		switch {
		case body.n > limit:
			return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
		case err != nil:
			return fmt.Errorf("decoding %s: %w", u, err)
		}
		return nil
	})
}

// defaultClient serves fetchers built without a client (tests).
var defaultClient = NewClient(Policy{Nets: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}})

// countingReader counts what it has read, to tell an answer cut at the size
// bound from a malformed one.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// acquire takes a slot of host's own, one of a namespace's share and one
// of the pool host belongs to (proven hosts', or the others'), waiting at
// most Timeout; release gives them back.
func (f *Fetcher) acquire(ctx context.Context, namespaces []string, host string, proven bool) (release func(), err error) {
	f.once.Do(func() {
		n := f.Concurrency
		if n <= 0 {
			n = DefaultConcurrency
		}
		f.sem, f.probation = make(chan struct{}, n), make(chan struct{}, n)
	})
	pool := f.probation
	if proven {
		pool = f.sem
	}
	if len(namespaces) == 0 {
		namespaces = []string{""}
	}
	namespaces = namespaces[:min(len(namespaces), maxCandidates)]
	perNS := f.PerNamespace
	if perNS <= 0 {
		perNS = DefaultPerNamespace
	}
	f.mu.Lock()
	if f.hosts == nil {
		f.hosts, f.shares = map[string]*slots{}, map[string]*slots{}
	}
	hs := use(f.hosts, host, perHostSlots)
	shares := make([]*slots, len(namespaces))
	for i, ns := range namespaces {
		shares[i] = use(f.shares, ns, perNS)
	}
	f.mu.Unlock()
	done := func() {
		f.mu.Lock()
		unuse(f.hosts, host, hs)
		for i, ns := range namespaces {
			unuse(f.shares, ns, shares[i])
		}
		f.mu.Unlock()
	}
	wait, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	select {
	case hs.c <- struct{}{}:
	case <-wait.Done():
		done()
		return nil, wait.Err()
	}
	share, err := takeAny(wait, shares)
	if err != nil {
		<-hs.c
		done()
		return nil, err
	}
	select {
	case pool <- struct{}{}:
	case <-wait.Done():
		<-share.c
		<-hs.c
		done()
		return nil, wait.Err()
	}
	return func() { <-pool; <-share.c; <-hs.c; done() }, nil
}

// takeAny takes a slot of whichever of shares frees one first.
func takeAny(ctx context.Context, shares []*slots) (*slots, error) {
	for _, s := range shares {
		select {
		case s.c <- struct{}{}:
			return s, nil
		default:
		}
	}
	cases := make([]reflect.SelectCase, 0, len(shares)+1)
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())})
	for _, s := range shares {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectSend, Chan: reflect.ValueOf(s.c), Send: reflect.ValueOf(struct{}{})})
	}
	i, _, _ := reflect.Select(cases)
	if i == 0 {
		return nil, ctx.Err()
	}
	return shares[i-1], nil
}

func use(m map[string]*slots, key string, n int) *slots {
	s := m[key]
	if s == nil {
		s = &slots{c: make(chan struct{}, n)}
		m[key] = s
	}
	s.users++
	return s
}

func unuse(m map[string]*slots, key string, s *slots) {
	if s.users--; s.users == 0 {
		delete(m, key) // bounded by the hosts and namespaces being read now
	}
}

func (f *Fetcher) isProven(host string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.proven[host]
	return ok
}

// noteResult records whether host's last read succeeded, for the pool its
// next read waits in.
func (f *Fetcher) noteResult(host string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ok && len(f.proven) < maxProvenHosts:
		if f.proven == nil {
			f.proven = map[string]time.Time{}
		}
		f.proven[host] = f.Now()
	case !ok:
		delete(f.proven, host)
	}
}

func (f *Fetcher) observe(host string, d time.Duration, err error) {
	if f.Metrics == nil {
		return
	}
	f.mu.Lock()
	if _, ok := f.labeled[host]; ok || len(f.labeled) < MaxHostLabels {
		if f.labeled == nil {
			f.labeled = map[string]time.Time{}
		}
		f.labeled[host] = f.Now()
	} else {
		host = "other"
	}
	f.mu.Unlock()
	f.Metrics.QueueReadLatency.WithLabelValues(host).Observe(d.Seconds())
	if err != nil {
		f.Metrics.QueueReadErrors.WithLabelValues(host).Inc()
	}
}

// Forget drops what is remembered of hosts that no read has named for
// ForgetAfter: proven, and their metric series. Sources call it once per
// Read.
func (f *Fetcher) Forget() {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.Now()
	for host, at := range f.proven {
		if now.Sub(at) > ForgetAfter {
			delete(f.proven, host)
		}
	}
	if f.Metrics == nil {
		return
	}
	for host, at := range f.labeled {
		if now.Sub(at) > ForgetAfter {
			f.Metrics.QueueReadLatency.DeleteLabelValues(host)
			f.Metrics.QueueReadErrors.DeleteLabelValues(host)
			delete(f.labeled, host)
		}
	}
}

// Namespaces merges the namespaces of refs, sorted, for a request that
// serves them all.
func Namespaces(refs ...Ref) []string {
	var out []string
	for _, r := range refs {
		for _, ns := range r.Namespaces {
			if !slices.Contains(out, ns) {
				out = append(out, ns)
			}
		}
	}
	slices.Sort(out)
	return out
}

// HTTPClient is the client requests go through (the endpoint policy's).
func (f *Fetcher) HTTPClient() *http.Client {
	if f.Client == nil {
		return defaultClient
	}
	return f.Client
}
