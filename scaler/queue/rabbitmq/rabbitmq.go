// Package rabbitmq is the queue source for RabbitMQ: one GET of the
// management API per queue per tick however many Deployments name it
// (messages ready, unacknowledged, published, and consumers). The
// management API refreshes its figures every statistics interval (5 s by
// default): a reading whose figures have not changed keeps the time of the
// first that showed them (for up to three intervals: longer, the queue is
// at rest), so rates are measured over the interval the server counted,
// not over the controller's ticks.
package rabbitmq

import (
	"context"
	"encoding/json"
	"fmt"
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

	seen queue.Unchanged[annotations.QueueRef, answer]
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
	MessageStats struct {
		Publish int64 `json:"publish"`
	} `json:"message_stats"`
}

// wire is the answer as sent: the counts are missing until the server has
// collected the queue's first statistics.
type wire struct {
	Ready        *int64 `json:"messages_ready"`
	Unacked      *int64 `json:"messages_unacknowledged"`
	Consumers    *int64 `json:"consumers"`
	MessageStats struct {
		Publish int64 `json:"publish"`
	} `json:"message_stats"`
}

// errNoStats: a queue the management API has no counts of yet (just
// declared) is not read as empty.
const errNoStats = queue.Class("no statistics for the queue yet")

type snapshot map[annotations.QueueRef]*read

// read is one queue's answer; set before done closes.
type read struct {
	done chan struct{}
	got  policy.QueueReading
	err  error
}

// Read starts one GET per queue and returns at once.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	r.seen.Forget(r.Fetcher.Now())
	s := snapshot{}
	for _, q := range refs {
		rd := &read{done: make(chan struct{})}
		s[q.QueueRef] = rd
		go func() {
			defer close(rd.done)
			rd.got, rd.err = r.read(ctx, q)
			if rd.err != nil {
				rd.err = queue.Classify("rabbitmq", q.Host, rd.err)
			}
		}()
	}
	return s
}

func (r *Reader) read(ctx context.Context, q queue.Ref) (policy.QueueReading, error) {
	u := "http://" + q.Host + "/api/queues/" + url.PathEscape(q.Sub) + "/" + url.PathEscape(q.Name)
	creds, err := r.Fetcher.CredentialsFor(ctx, q.QueueRef)
	if err != nil {
		return policy.QueueReading{}, err
	}
	var w wire
	err = r.Fetcher.GetJSON(ctx, q.Namespaces, q.Host, u, creds.Authorize, func(dec *json.Decoder) error { return dec.Decode(&w) })
	if err != nil {
		return policy.QueueReading{}, err
	}
	if w.Ready == nil || w.Unacked == nil || w.Consumers == nil {
		return policy.QueueReading{}, errNoStats
	}
	a := answer{Ready: *w.Ready, Unacked: *w.Unacked, Consumers: *w.Consumers}
	a.MessageStats.Publish = w.MessageStats.Publish
	if a.Ready < 0 || a.Unacked < 0 || a.Consumers < 0 || a.MessageStats.Publish < 0 {
		return policy.QueueReading{}, queue.ErrMalformed
	}
	at := r.seen.Since(q.QueueRef, a, r.Fetcher.Now())
	return policy.QueueReading{Backlog: a.Ready + a.Unacked, Waiting: a.Ready, Arrived: a.MessageStats.Publish,
		Consumers: a.Consumers, At: at}, nil
}

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	rd, ok := s[q]
	if !ok {
		return policy.QueueReading{}, fmt.Errorf("rabbitmq %s: not read", q.Host)
	}
	<-rd.done
	return rd.got, rd.err
}
