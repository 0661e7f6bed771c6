// Package prometheus is the queue source for any queue Prometheus can see
// (Kafka consumer lag, SQS through an exporter, ...): one instant query per
// distinct expression per server per tick, through client_golang's API
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
}

// NewReader is a Reader whose figures, unchanged for longer than a minute
// (Prometheus's default scrape interval), are a queue at rest.
func NewReader(f *queue.Fetcher) *Reader {
	r := &Reader{Fetcher: f}
	r.seen.Hold = time.Minute
	return r
}

type queryKey struct{ host, expr, secret string }

// result is one query's value; set before done closes.
type result struct {
	done chan struct{}
	v    int64
	err  error
}

type snapshot struct {
	r       *Reader
	results map[queryKey]*result
}

// Read starts one query per distinct expression per server and returns at
// once.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	r.seen.Forget(r.Fetcher.Now())
	charged := map[queryKey][]queue.Ref{}
	for _, q := range refs {
		for _, e := range []string{q.Name, q.Sub} {
			if e != "" {
				k := queryKey{q.Host, e, q.Secret}
				charged[k] = append(charged[k], q)
			}
		}
	}
	s := snapshot{r: r, results: map[queryKey]*result{}}
	for k, rs := range charged {
		res := &result{done: make(chan struct{})}
		s.results[k] = res
		go func() {
			defer close(res.done)
			err := r.Fetcher.Do(ctx, queue.Namespaces(rs...), k.host, func(ctx context.Context) error {
				v, err := r.query(ctx, k, rs[0].QueueRef)
				res.v = v
				return err
			})
			if err != nil {
				res.err = queue.Classify("prometheus", k.host, err)
			}
		}()
	}
	return s
}

// Classes of failed queries; the server's own words are never passed on.
const (
	errNoValue    = queue.Class("the query gave no value")
	errManyValues = queue.Class("the query gave more than one series: aggregate it (sum)")
	errBadValue   = queue.Class("the query gave a value that is not a count (negative, NaN or too large)")
	errBadQuery   = queue.Class("the server refused the query")
	errNotAValue  = queue.Class("the query gave neither a vector nor a scalar")
)

func (r *Reader) query(ctx context.Context, k queryKey, q annotations.QueueRef) (int64, error) {
	creds, err := r.Fetcher.CredentialsFor(ctx, q)
	if err != nil {
		return 0, err
	}
	c, err := api.NewClient(api.Config{Address: "http://" + k.host, Client: &http.Client{
		Transport:     bounded{next: r.Fetcher.HTTPClient().Transport, limit: r.Fetcher.MaxAnswer(), creds: creds},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}})
	if err != nil {
		return 0, err
	}
	v, _, _, err := v1.NewAPI(c).Query(ctx, k.expr, r.Fetcher.Now())
	var pe *v1.Error
	switch {
	case errors.Is(err, queue.ErrTooLarge):
		return 0, fmt.Errorf("%w: more than %d bytes", queue.ErrTooLarge, r.Fetcher.MaxAnswer())
	case errors.As(err, &pe) && (pe.Type == v1.ErrBadData || pe.Type == v1.ErrExec || pe.Type == v1.ErrTimeout || pe.Type == v1.ErrCanceled):
		return 0, fmt.Errorf("%w (%s)", errBadQuery, pe.Type)
	case errors.As(err, &pe) && pe.Type == v1.ErrClient:
		return 0, queue.Class("the server refused the request (HTTP 4xx)")
	case errors.As(err, &pe) && pe.Type == v1.ErrServer:
		return 0, queue.Class("the server failed (HTTP 5xx)")
	case errors.As(err, &pe):
		return 0, fmt.Errorf("%w: not a Prometheus API answer", queue.ErrMalformed)
	case err != nil:
		return 0, err
	}
	var f float64
	switch v := v.(type) {
	case model.Vector:
		switch len(v) {
		case 0:
			return 0, errNoValue
		case 1:
			f = float64(v[0].Value)
		default:
			return 0, errManyValues
		}
	case *model.Scalar:
		f = float64(v.Value)
	default:
		return 0, errNotAValue
	}
	if math.IsNaN(f) || f < 0 || f > float64(annotations.MaxTarget)*1024 {
		return 0, errBadValue
	}
	return int64(math.Round(f)), nil
}

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	get := func(expr string) (int64, error) {
		res, ok := s.results[queryKey{q.Host, expr, q.Secret}]
		if !ok {
			return 0, fmt.Errorf("prometheus %s: not read", q.Host)
		}
		<-res.done
		return res.v, res.err
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
	out.At = s.r.seen.Since(q, [2]int64{out.Backlog, out.Arrived}, s.r.Fetcher.Now())
	return out, nil
}

// bounded adds the credentials and fails an answer's body past limit
// bytes.
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
