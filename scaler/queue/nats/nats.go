// Package nats is the queue source for NATS JetStream: one GET of the
// server's monitoring endpoint (/jsz?consumers=true) per server per tick
// however many consumers name it, each consumer read as its pending
// messages (not yet delivered), its messages delivered and not yet
// acknowledged, and its deliveries so far.
package nats

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// Reader reads JetStream consumers.
type Reader struct {
	// Fetcher bounds every read (slots, shares, timeout, answer size).
	Fetcher *queue.Fetcher
}

// consumer is the part of a consumer in /jsz?consumers=true that is read.
type consumer struct {
	Name      string `json:"name"`
	Delivered struct {
		ConsumerSeq int64 `json:"consumer_seq"`
	} `json:"delivered"`
	AckPending int64 `json:"num_ack_pending"`
	Pending    int64 `json:"num_pending"`
}

// Read starts one GET per server and returns at once.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	s := snapshot{}
	for e, rs := range queue.ByEndpoint(refs) {
		h := &hostRead{done: make(chan struct{})}
		s[e] = h
		host := e.Host
		go func() {
			defer close(h.done)
			creds, err := r.Fetcher.CredentialsFor(ctx, rs[0].QueueRef)
			if err != nil {
				h.err = queue.Classify("nats", host, err)
				return
			}
			want := make(map[streamConsumer]bool, len(rs))
			for _, q := range rs {
				want[streamConsumer{q.Name, q.Sub}] = true
			}
			u := "http://" + host + "/jsz?consumers=true"
			err = r.Fetcher.GetJSON(ctx, queue.Namespaces(rs...), host, u, creds.Authorize, func(dec *json.Decoder) error {
				h.at = r.Fetcher.Now()
				h.consumers, err = decode(dec, want)
				return err
			})
			if err != nil {
				h.err = queue.Classify("nats", host, err)
			}
		}()
	}
	return s
}

type snapshot map[queue.Endpoint]*hostRead

// hostRead is one server's answer; set before done closes.
type hostRead struct {
	done      chan struct{}
	consumers map[streamConsumer]consumer
	at        time.Time
	err       error
}

// streamConsumer names a consumer on a server.
type streamConsumer struct{ stream, consumer string }

// decode reads /jsz?consumers=true as a stream, stream by stream, keeping
// the consumers wanted (the first account's when two name the same stream
// and consumer): nothing else of the answer is held, and the buffer holds
// one stream at a time.
func decode(dec *json.Decoder, want map[streamConsumer]bool) (map[streamConsumer]consumer, error) {
	out := make(map[streamConsumer]consumer, len(want))
	// in walks into the array under key of each object of an array.
	in := func(key string, each func() error) func() error {
		return func() error {
			return queue.WalkObject(dec, func(k string) (bool, error) {
				if k != key {
					return false, nil
				}
				return true, queue.WalkArray(dec, each)
			})
		}
	}
	stream := func() error {
		var st struct {
			Name      string     `json:"name"`
			Consumers []consumer `json:"consumer_detail"`
		}
		if err := dec.Decode(&st); err != nil {
			return err
		}
		for _, c := range st.Consumers {
			k := streamConsumer{st.Name, c.Name}
			if _, dup := out[k]; want[k] && !dup {
				out[k] = c
			}
		}
		return nil
	}
	err := in("account_details", in("stream_detail", stream))()
	return out, err
}

const errNoConsumer = queue.Class("no such JetStream stream and consumer on the server")

// Pending is nil when q's server has answered (or was never asked), else
// the channel closed when it does.
func (s snapshot) Pending(q annotations.QueueRef) <-chan struct{} {
	if h, ok := s[queue.EndpointOf(q)]; ok {
		return queue.Open(h.done)
	}
	return nil
}

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	h, ok := s[queue.EndpointOf(q)]
	if !ok {
		return policy.QueueReading{}, fmt.Errorf("nats %s: not read", q.Host)
	}
	<-h.done
	if h.err != nil {
		return policy.QueueReading{}, h.err
	}
	c, ok := h.consumers[streamConsumer{q.Name, q.Sub}]
	if !ok {
		return policy.QueueReading{}, queue.Classify("nats", q.Host, errNoConsumer)
	}
	if c.Pending < 0 || c.AckPending < 0 || c.Delivered.ConsumerSeq < 0 {
		return policy.QueueReading{}, queue.Classify("nats", q.Host, queue.ErrMalformed)
	}
	return policy.QueueReading{Backlog: c.Pending + c.AckPending, Waiting: c.Pending,
		Arrived: c.Delivered.ConsumerSeq + c.Pending, At: h.at}, nil
}
