// Package prometheus is the queue source for any queue Prometheus can see
// (Kafka consumer lag, SQS through an exporter, ...): each distinct
// expression evaluated once per server per tick, one tenant's expressions
// together in one instant query (up to 256), through client_golang's API
// client, bounded like every other read. A backlog query's value is the
// messages waiting; an arrivals query's is a counter of the messages that
// arrived (a sum of log-end offsets, say), from which rates are learnt.
// Without one the queue is sized from its backlog alone.
package prometheus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// Reader runs the queries of Prometheus queues.
type Reader struct {
	// Fetcher bounds every query (slots, shares, timeout, answer size).
	Fetcher *queue.Fetcher

	seen queue.Unchanged[annotations.QueueRef, [2]int64]
	plan queue.Plan[plan]
}

// NewReader is a Reader whose figures, unchanged for longer than a minute
// (Prometheus's default scrape interval), are a queue at rest.
func NewReader(f *queue.Fetcher) *Reader {
	r := &Reader{Fetcher: f}
	r.seen.Hold = time.Minute
	return r
}

type queryKey struct{ host, expr, secret string }

// plan is how a set of refs is asked: the queries, in batches of one
// tenant each, and where each expression's value is in a tick's results.
type plan struct {
	batches []batch
	at      map[queryKey]int // index in a tick's results
}

// batch is expressions asked together: results first to first+len(keys).
type batch struct {
	keys       []queryKey
	refs       []queue.Ref // that name them, for their namespaces' shares
	namespaces []string
	query      string // the joined expression (see join); empty for one key
	first      int
}

// result is one expression's value; set before its batch's done closes.
type result struct {
	v   int64
	err error
}

type snapshot struct {
	r       *Reader
	plan    plan
	results []result
	done    []chan struct{} // by batch
	batchOf []int           // by result
}

// newPlan groups the distinct expressions of refs by server and Secret:
// the expressions of one tenant (the same Secret, or the same namespaces)
// go to the server together, up to maxBatch in one query.
func newPlan(refs []queue.Ref) plan {
	charged := map[queryKey][]queue.Ref{}
	for _, q := range refs {
		for _, e := range []string{q.Name, q.Sub} {
			if e != "" {
				k := queryKey{q.Host, e, q.Secret}
				charged[k] = append(charged[k], q)
			}
		}
	}
	type tenant struct{ host, secret, namespaces string }
	byTenant := map[tenant][]queryKey{}
	for k, rs := range charged {
		t := tenant{k.host, k.secret, strings.Join(queue.Namespaces(rs...), ",")}
		byTenant[t] = append(byTenant[t], k)
	}
	p := plan{at: make(map[queryKey]int, len(charged))}
	for _, ks := range byTenant {
		slices.SortFunc(ks, func(a, b queryKey) int { return strings.Compare(a.expr, b.expr) })
		for chunk := range slices.Chunk(ks, maxBatch) {
			b := batch{keys: chunk, first: len(p.at)}
			for i, k := range chunk {
				p.at[k] = b.first + i
				b.refs = append(b.refs, charged[k]...)
			}
			b.namespaces = queue.Namespaces(b.refs...)
			if len(chunk) > 1 {
				b.query = join(chunk)
			}
			p.batches = append(p.batches, b)
		}
	}
	return p
}

// Read starts the tick's queries and returns at once: each distinct
// expression is evaluated once per server and Secret, in the batches of
// the refs' plan (built again only when the refs change). A batch the
// server refuses is asked again in halves (see run), so one tenant's bad
// expression fails only its own queue.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	r.seen.Forget(r.Fetcher.Now())
	p := r.plan.For(refs, newPlan)
	s := snapshot{r: r, plan: p, results: make([]result, len(p.at)),
		done: make([]chan struct{}, len(p.batches)), batchOf: make([]int, len(p.at))}
	for i, b := range p.batches {
		s.done[i] = make(chan struct{})
		for j := range b.keys {
			s.batchOf[b.first+j] = i
		}
		go func() {
			defer close(s.done[i])
			r.run(ctx, b, b.keys, b.query, s.results[b.first:b.first+len(b.keys)])
		}()
	}
	return s
}

// maxBatch bounds the expressions asked in one query (each at most
// annotations.MaxQueryBytes, sent as a form body): a tenant's 400 queues
// cost 4 requests a tick, not 25.
const maxBatch = 256

// run evaluates ks, expressions of batch b, into res: together (as
// query, joined when empty) when there are several. A batch the server
// refuses is split in halves, each asked again, so one bad expression
// among n costs about 2·log2(n) queries and fails only itself.
func (r *Reader) run(ctx context.Context, b batch, ks []queryKey, query string, res []result) {
	host := ks[0].host
	fail := func(err error) error { return queue.Classify("prometheus", host, err) }
	if len(ks) == 1 {
		err := r.Fetcher.Do(ctx, b.namespaces, host, func(ctx context.Context) (err error) {
			res[0].v, err = r.query(ctx, ks[0], b.refs[0].QueueRef)
			return err
		})
		if err != nil {
			res[0].err = fail(err)
		}
		return
	}
	if query == "" {
		query = join(ks)
	}
	var vs []queryValue
	err := r.Fetcher.Do(ctx, b.namespaces, host, func(ctx context.Context) (err error) {
		vs, err = r.askAll(ctx, ks, query, b.refs[0].QueueRef)
		return err
	})
	switch {
	case err == nil:
		for i := range res {
			res[i].v, res[i].err = vs[i].v, vs[i].err
			if res[i].err != nil {
				res[i].err = fail(res[i].err)
			}
		}
	case errors.Is(err, errBadQuery):
		half := len(ks) / 2
		r.run(ctx, b, ks[:half], "", res[:half])
		r.run(ctx, b, ks[half:], "", res[half:])
	default:
		for i := range res {
			res[i].err = fail(err)
		}
	}
}

// Classes of failed queries; the server's own words are never passed on.
const (
	errNoValue    = queue.Class("the query gave no value")
	errManyValues = queue.Class("the query gave more than one series: aggregate it (sum)")
	errBadValue   = queue.Class("the query gave a value that is not a count (negative, NaN or too large)")
	errBadQuery   = queue.Class("the server refused the query")
	errNotAValue  = queue.Class("the query gave neither a vector nor a scalar")
)

// api is a client of the server, bounded and with q's credentials.
func (r *Reader) api(ctx context.Context, host string, q annotations.QueueRef) (v1.API, error) {
	creds, err := r.Fetcher.CredentialsFor(ctx, q)
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.Config{Address: "http://" + host, Client: &http.Client{
		Transport:     bounded{next: r.Fetcher.HTTPClient().Transport, limit: r.Fetcher.MaxAnswer(), creds: creds},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}})
	if err != nil {
		return nil, err
	}
	return v1.NewAPI(c), nil
}

// ask evaluates expr now; errors are classes.
func (r *Reader) ask(ctx context.Context, host, expr string, q annotations.QueueRef) (model.Value, error) {
	a, err := r.api(ctx, host, q)
	if err != nil {
		return nil, err
	}
	v, _, _, err := a.Query(ctx, expr, r.Fetcher.Now())
	var pe *v1.Error
	switch {
	case errors.Is(err, queue.ErrTooLarge):
		return nil, fmt.Errorf("%w: more than %d bytes", queue.ErrTooLarge, r.Fetcher.MaxAnswer())
	case errors.As(err, &pe) && (pe.Type == v1.ErrBadData || pe.Type == v1.ErrExec || pe.Type == v1.ErrTimeout || pe.Type == v1.ErrCanceled):
		return nil, fmt.Errorf("%w (%s)", errBadQuery, pe.Type)
	case errors.As(err, &pe) && pe.Type == v1.ErrClient:
		return nil, queue.Class("the server refused the request (HTTP 4xx)")
	case errors.As(err, &pe) && pe.Type == v1.ErrServer:
		return nil, queue.Class("the server failed (HTTP 5xx)")
	case errors.As(err, &pe):
		return nil, fmt.Errorf("%w: not a Prometheus API answer", queue.ErrMalformed)
	}
	return v, err
}

// query evaluates one expression to one count.
func (r *Reader) query(ctx context.Context, k queryKey, q annotations.QueueRef) (int64, error) {
	v, err := r.ask(ctx, k.host, k.expr, q)
	if err != nil {
		return 0, err
	}
	switch v := v.(type) {
	case model.Vector:
		return count(v)
	case *model.Scalar:
		return countOf(float64(v.Value))
	}
	return 0, errNotAValue
}

// batchLabel tells the expressions of a batch apart in its answer.
const batchLabel = "microscaling_query"

type queryValue struct {
	v   int64
	err error
}

// join is several expressions as one query: each one's series labelled
// with its index (label_replace), the results joined with or. An
// expression's own series keep their count, so "no value" and "more than
// one series" are told per expression as if it had been asked alone. An
// expression that is not a vector (a scalar) makes the server refuse the
// whole: run then asks its halves.
func join(ks []queryKey) string {
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString(" or ")
		}
		fmt.Fprintf(&b, "label_replace((%s), %q, \"%d\", \"\", \"\")", k.expr, batchLabel, i)
	}
	return b.String()
}

// askAll evaluates ks joined as query (see join) and splits the answer
// into each expression's value.
func (r *Reader) askAll(ctx context.Context, ks []queryKey, query string, q annotations.QueueRef) ([]queryValue, error) {
	v, err := r.ask(ctx, ks[0].host, query, q)
	if err != nil {
		return nil, err
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, errNotAValue
	}
	parts := make([]model.Vector, len(ks))
	for _, smp := range vec {
		i, err := strconv.Atoi(string(smp.Metric[batchLabel]))
		if err != nil || i < 0 || i >= len(ks) {
			return nil, fmt.Errorf("%w: a series of no expression asked", queue.ErrMalformed)
		}
		parts[i] = append(parts[i], smp)
	}
	out := make([]queryValue, len(ks))
	for i, p := range parts {
		out[i].v, out[i].err = count(p)
	}
	return out, nil
}

// count is the one value of a vector.
func count(v model.Vector) (int64, error) {
	switch len(v) {
	case 0:
		return 0, errNoValue
	case 1:
		return countOf(float64(v[0].Value))
	}
	return 0, errManyValues
}

func countOf(f float64) (int64, error) {
	if math.IsNaN(f) || f < 0 || f > float64(annotations.MaxTarget)*1024 {
		return 0, errBadValue
	}
	return int64(math.Round(f)), nil
}

// Pending is nil when the batches of q's queries have been answered (or
// were never asked), else the done channel of one still asking.
func (s snapshot) Pending(q annotations.QueueRef) <-chan struct{} {
	for _, expr := range []string{q.Name, q.Sub} {
		if i, ok := s.plan.at[queryKey{q.Host, expr, q.Secret}]; ok {
			if ch := queue.Open(s.done[s.batchOf[i]]); ch != nil {
				return ch
			}
		}
	}
	return nil
}

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	get := func(expr string) (int64, error) {
		i, ok := s.plan.at[queryKey{q.Host, expr, q.Secret}]
		if !ok {
			return 0, fmt.Errorf("prometheus %s: not read", q.Host)
		}
		<-s.done[s.batchOf[i]]
		return s.results[i].v, s.results[i].err
	}
	backlog, err := get(q.Name)
	if err != nil {
		return policy.QueueReading{}, err
	}
	// Prometheus tells waiting from in flight no more than the query does,
	// nor lists consumers.
	out := policy.QueueReading{Backlog: backlog, Waiting: backlog, NoArrivals: q.Sub == ""}
	if q.Sub != "" {
		if out.Arrived, err = get(q.Sub); err != nil {
			return policy.QueueReading{}, err
		}
	}
	out.At, out.Earliest = s.r.seen.Since(q, [2]int64{out.Backlog, out.Arrived}, s.r.Fetcher.Now())
	return out, nil
}

// bounded adds the credentials, makes a 401 or 403 a *queue.StatusError
// and fails an answer's body past limit bytes.
type bounded struct {
	next  http.RoundTripper
	limit int64
	creds queue.Credentials
}

func (b bounded) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	b.creds.Authorize(req)
	resp, err := b.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		// Refused credentials are told as such, like the other sources;
		// the answer's body is not read.
		resp.Body.Close()
		return nil, &queue.StatusError{Status: resp.StatusCode}
	}
	resp.Body = &limitedBody{rc: resp.Body, left: b.limit}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, queue.ErrTooLarge
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.rc.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, queue.ErrTooLarge
	}
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
