// Package rabbitmq is the queue source for RabbitMQ: one GET of the
// management API per virtual host per server (and Secret) per tick, however
// many queues and Deployments it covers, asking only for the columns read
// (messages ready, unacknowledged, published, acknowledged, and consumers)
// and keeping only the queues named. The management API refreshes its
// figures every statistics interval (5 s by default), each kind on its own
// timer: the queue's counts, the publishers' and the consumers' counters
// change at different instants. So the service rate is the consumers' own
// count of acknowledgements, and a reading is dated by that count: figures
// read again with it unchanged keep the time it was first seen (for up to
// three intervals: longer, the queue is at rest), so rates are measured
// over the interval the server counted, not over the controller's ticks.
// With no consumer, the whole answer dates it.
package rabbitmq

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// Reader reads RabbitMQ queues.
type Reader struct {
	// Fetcher bounds every read (slots, shares, timeout, answer size).
	Fetcher *queue.Fetcher

	seen queue.Unchanged[annotations.QueueRef, dated]
}

// NewReader is a Reader whose figures, unchanged for longer than three of
// RabbitMQ's default statistics intervals (5 s), are a queue at rest.
func NewReader(f *queue.Fetcher) *Reader {
	r := &Reader{Fetcher: f}
	r.seen.Hold = 15 * time.Second
	return r
}

// answer is the part of GET /api/queues/VHOST/QUEUE that is read.
type answer struct {
	Ready        int64 `json:"messages_ready"`
	Unacked      int64 `json:"messages_unacknowledged"`
	Consumers    int64 `json:"consumers"`
	MessageStats stats `json:"message_stats"`
}

// wire is one queue of the answer as sent: the counts are missing until
// the server has collected the queue's first statistics.
type wire struct {
	Name         string `json:"name"`
	Ready        *int64 `json:"messages_ready"`
	Unacked      *int64 `json:"messages_unacknowledged"`
	Consumers    *int64 `json:"consumers"`
	MessageStats stats  `json:"message_stats"`
}

// stats are the queue's cumulative message counters.
type stats struct {
	Publish int64 `json:"publish"`
	// Acknowledged deliveries, deliveries and gets that needed none: what
	// consumers finished.
	Ack          int64 `json:"ack"`
	DeliverNoAck int64 `json:"deliver_no_ack"`
	GetNoAck     int64 `json:"get_no_ack"`
}

// dated is what a reading's time follows: the consumers' count when some
// are connected, else the whole answer.
type dated struct {
	a         answer
	completed int64
}

// columns are the only fields the management API is asked for.
const columns = "name,messages_ready,messages_unacknowledged,consumers," +
	"message_stats.publish,message_stats.ack,message_stats.deliver_no_ack,message_stats.get_no_ack"

// Classes of what the server says about one queue.
const (
	// errNoStats: a queue the management API has no counts of yet (just
	// declared) is not read as empty.
	errNoStats = queue.Class("no statistics for the queue yet")
	errNoQueue = queue.Class("no such queue in the virtual host")
)

// vhostKey is one GET: a server read with one Secret, one virtual host.
type vhostKey struct {
	queue.Endpoint
	vhost string
}

// snapshot is one tick's reads, answering per queue from its virtual
// host's.
type snapshot struct {
	reads map[vhostKey]*vhostRead
	r     *Reader
}

// vhostRead is one virtual host's answer, the queues asked for only; set
// before done closes.
type vhostRead struct {
	done chan struct{}
	got  map[string]wire
	at   time.Time
	err  error
}

// Read starts one GET per server, Secret and virtual host, and returns at
// once.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	r.seen.Forget(r.Fetcher.Now())
	byVhost := queue.GroupBy(refs, func(q queue.Ref) vhostKey { return vhostKey{queue.EndpointOf(q.QueueRef), q.Sub} })
	s := snapshot{reads: map[vhostKey]*vhostRead{}, r: r}
	for k, rs := range byVhost {
		rd := &vhostRead{done: make(chan struct{})}
		s.reads[k] = rd
		go func() {
			defer close(rd.done)
			if rd.err = r.read(ctx, k, rs, rd); rd.err != nil {
				rd.err = queue.Classify("rabbitmq", k.Host, rd.err)
			}
		}()
	}
	return s
}

func (r *Reader) read(ctx context.Context, k vhostKey, rs []queue.Ref, rd *vhostRead) error {
	creds, err := r.Fetcher.CredentialsFor(ctx, rs[0].QueueRef)
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(rs))
	for _, q := range rs {
		want[q.Name] = true
	}
	u := "http://" + k.Host + "/api/queues/" + url.PathEscape(k.vhost) + "?columns=" + url.QueryEscape(columns)
	rd.got = map[string]wire{}
	return r.Fetcher.GetJSON(ctx, queue.Namespaces(rs...), k.Host, u, creds.Authorize, func(dec *json.Decoder) error {
		rd.at = r.Fetcher.Now()
		// A stream of queues, of which only those named are kept.
		if tok, err := dec.Token(); err != nil {
			return err
		} else if d, ok := tok.(json.Delim); !ok || d != '[' {
			return queue.ErrMalformed
		}
		for dec.More() {
			var w wire
			if err := dec.Decode(&w); err != nil {
				return err
			}
			if want[w.Name] {
				rd.got[w.Name] = w
			}
		}
		_, err := dec.Token()
		return err
	})
}

// Pending is nil when q's virtual host has been read (or was never
// asked), else the channel closed when it is.
func (s snapshot) Pending(q annotations.QueueRef) <-chan struct{} {
	if rd, ok := s.reads[vhostKey{queue.EndpointOf(q), q.Sub}]; ok {
		return queue.Open(rd.done)
	}
	return nil
}

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	rd, ok := s.reads[vhostKey{queue.EndpointOf(q), q.Sub}]
	if !ok {
		return policy.QueueReading{}, fmt.Errorf("rabbitmq %s: not read", q.Host)
	}
	<-rd.done
	if rd.err != nil {
		return policy.QueueReading{}, rd.err
	}
	w, ok := rd.got[q.Name]
	if !ok {
		return policy.QueueReading{}, queue.Classify("rabbitmq", q.Host, errNoQueue)
	}
	if w.Ready == nil || w.Unacked == nil || w.Consumers == nil {
		return policy.QueueReading{}, queue.Classify("rabbitmq", q.Host, errNoStats)
	}
	a := answer{Ready: *w.Ready, Unacked: *w.Unacked, Consumers: *w.Consumers, MessageStats: w.MessageStats}
	st := a.MessageStats
	if a.Ready < 0 || a.Unacked < 0 || a.Consumers < 0 || st.Publish < 0 || st.Ack < 0 || st.DeliverNoAck < 0 || st.GetNoAck < 0 ||
		a.Ready > math.MaxInt64-a.Unacked || st.Ack > math.MaxInt64-st.DeliverNoAck-st.GetNoAck {
		return policy.QueueReading{}, queue.Classify("rabbitmq", q.Host, queue.ErrMalformed)
	}
	completed := st.Ack + st.DeliverNoAck + st.GetNoAck
	key := dated{completed: completed}
	if a.Consumers == 0 {
		key.a = a
	}
	at, earliest := s.r.seen.Since(q, key, rd.at)
	return policy.QueueReading{Backlog: a.Ready + a.Unacked, Waiting: a.Ready, Arrived: st.Publish,
		Completed: completed, CompletedKnown: true, Consumers: a.Consumers, At: at, Earliest: earliest}, nil
}
