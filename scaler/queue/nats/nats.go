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

// jsz is the part of /jsz?consumers=true that is read.
type jsz struct {
	Accounts []struct {
		Streams []struct {
			Name      string     `json:"name"`
			Consumers []consumer `json:"consumer_detail"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

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
			u := "http://" + host + "/jsz?consumers=true"
			err = r.Fetcher.GetJSON(ctx, queue.Namespaces(rs...), host, u, creds.Authorize, func(dec *json.Decoder) error {
				h.at = r.Fetcher.Now()
				return dec.Decode(&h.answer)
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
	done   chan struct{}
	answer jsz
	at     time.Time
	err    error
}

const errNoConsumer = queue.Class("no such JetStream stream and consumer on the server")

func (s snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	h, ok := s[queue.EndpointOf(q)]
	if !ok {
		return policy.QueueReading{}, fmt.Errorf("nats %s: not read", q.Host)
	}
	<-h.done
	if h.err != nil {
		return policy.QueueReading{}, h.err
	}
	for _, a := range h.answer.Accounts {
		for _, st := range a.Streams {
			if st.Name != q.Name {
				continue
			}
			for _, c := range st.Consumers {
				if c.Name == q.Sub {
					if c.Pending < 0 || c.AckPending < 0 || c.Delivered.ConsumerSeq < 0 {
						return policy.QueueReading{}, queue.Classify("nats", q.Host, queue.ErrMalformed)
					}
					// Deliveries so far and what waits to be delivered are
					// every message that arrived for the consumer (a
					// redelivery counts as one more: it is more work).
					// Consumers connected are not listed.
					return policy.QueueReading{Backlog: c.Pending + c.AckPending, Waiting: c.Pending,
						Arrived: c.Delivered.ConsumerSeq + c.Pending, At: h.at}, nil
				}
			}
		}
	}
	return policy.QueueReading{}, queue.Classify("nats", q.Host, errNoConsumer)
}
