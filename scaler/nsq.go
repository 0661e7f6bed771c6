package scaler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

// maxStatsBytes bounds one /stats answer; a larger one is an error, not an OOM.
const maxStatsBytes = 64 << 20

// nsqStats is the part of nsqd's GET /stats?format=json that we read. nsqd
// 1.x returns it bare; before 1.0 it was wrapped in {"data": ...}.
type nsqStats struct {
	Data   *nsqStats  `json:"data"`
	Topics []nsqTopic `json:"topics"`

	byName map[string]*nsqTopic // Topics by name, built once per read
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

// QueueReading is the sum over every nsqd of one queue reference.
type QueueReading struct {
	Backlog int64 // waiting + in flight + deferred
	Waiting int64 // not yet delivered: channel depth, or topic depth without a channel
	Arrived int64
	// Consumers is the most connections to the channel on any one nsqd: a
	// consumer connects to every nsqd that carries its topic.
	Consumers int64
}

// NSQReader reads nsqd /stats, once per nsqd per Read however many queues
// name it, and resolves nsqlookupd addresses to the nsqds that carry a topic.
type NSQReader struct {
	Client  *http.Client
	Timeout time.Duration // per request
	// Metrics, when set, records each request's latency and failures, by
	// host for at most maxHostLabels hosts (the rest as "other"); a host no
	// queue names any more loses its series.
	Metrics *Metrics

	mu      sync.Mutex // guards labeled
	labeled map[string]bool
}

// maxHostLabels bounds the host label values of the read metrics: hosts
// come from tenants' annotations and nsqlookupd answers.
const maxHostLabels = 256

// Snapshot is one tick's reading of every nsqd that some queue names.
type Snapshot struct {
	// stats and errs by nsqd host:port.
	stats map[string]*nsqStats
	errs  map[string]error
	// producers and lookupErrs by nsqlookupd host:port and topic: one
	// tenant's failed lookup (or an nsq:// read of a lookupd's port) never
	// fails another tenant's topic on the same nsqlookupd.
	producers  map[lookupKey][]string
	lookupErrs map[lookupKey]error
}

type lookupKey struct{ lookupd, topic string }

// Read fetches the stats that refs need, in parallel.
func (r *NSQReader) Read(ctx context.Context, refs []annotations.QueueRef) Readings {
	s := &Snapshot{stats: map[string]*nsqStats{}, errs: map[string]error{}, producers: map[lookupKey][]string{}, lookupErrs: map[lookupKey]error{}}
	var mu sync.Mutex // guards s while the fetches run
	var wg sync.WaitGroup
	// First resolve lookupd topics to nsqds.
	lookups := map[lookupKey]bool{}
	nsqds := map[string]bool{}
	for _, q := range refs {
		if q.Scheme == "nsqlookupd" {
			lookups[lookupKey{q.Host, q.Topic}] = true
		} else {
			nsqds[q.Host] = true
		}
	}
	for k := range lookups {
		wg.Go(func() {
			t0 := time.Now()
			ps, err := r.lookup(ctx, k.lookupd, k.topic)
			r.observe(k.lookupd, time.Since(t0), err)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.lookupErrs[k] = readError("nsqlookupd", k.lookupd, err)
				return
			}
			s.producers[k] = ps
		})
	}
	wg.Wait()
	for _, ps := range s.producers {
		for _, p := range ps {
			nsqds[p] = true
		}
	}
	r.prune(lookups, nsqds)
	for host := range nsqds {
		wg.Go(func() {
			t0 := time.Now()
			st, err := r.stats(ctx, host)
			r.observe(host, time.Since(t0), err)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.errs[host] = readError("nsqd", host, err)
				return
			}
			s.stats[host] = st
		})
	}
	wg.Wait()
	return s
}

func (r *NSQReader) observe(host string, d time.Duration, err error) {
	if r.Metrics == nil {
		return
	}
	r.mu.Lock()
	if !r.labeled[host] {
		if len(r.labeled) < maxHostLabels {
			if r.labeled == nil {
				r.labeled = map[string]bool{}
			}
			r.labeled[host] = true
		} else {
			host = "other"
		}
	}
	r.mu.Unlock()
	r.Metrics.QueueReadLatency.WithLabelValues(host).Observe(d.Seconds())
	if err != nil {
		r.Metrics.QueueReadErrors.WithLabelValues(host).Inc()
	}
}

// prune deletes the read metrics of hosts that this read does not name.
func (r *NSQReader) prune(lookups map[lookupKey]bool, nsqds map[string]bool) {
	if r.Metrics == nil {
		return
	}
	named := map[string]bool{}
	for k := range lookups {
		named[k.lookupd] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for host := range r.labeled {
		if !named[host] && !nsqds[host] {
			r.Metrics.QueueReadLatency.DeleteLabelValues(host)
			r.Metrics.QueueReadErrors.DeleteLabelValues(host)
			delete(r.labeled, host)
		}
	}
}

// Reading sums a queue over its nsqds. Any nsqd that could not be read makes
// the whole reading fail: a partial sum would look like a shrinking backlog.
func (s *Snapshot) Reading(q annotations.QueueRef) (QueueReading, error) {
	hosts := []string{q.Host}
	if q.Scheme == "nsqlookupd" {
		if err := s.lookupErrs[lookupKey{q.Host, q.Topic}]; err != nil {
			return QueueReading{}, err
		}
		hosts = s.producers[lookupKey{q.Host, q.Topic}]
	}
	var out QueueReading
	for _, h := range hosts {
		if err := s.errs[h]; err != nil {
			return QueueReading{}, err
		}
		st, ok := s.stats[h]
		if !ok {
			return QueueReading{}, fmt.Errorf("nsqd %s: not read", h)
		}
		t, ok := st.byName[q.Topic]
		if !ok {
			continue // no such topic on this nsqd: nothing waits there
		}
		i := slices.IndexFunc(t.Channels, func(c nsqChannel) bool { return c.Name == q.Channel })
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

func (r *NSQReader) get(ctx context.Context, u string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
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
	buf := bodies.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledBytes { // one huge answer must not stay
			bodies.Put(buf)
		}
	}()
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxStatsBytes+1)); err != nil {
		return fmt.Errorf("reading %s: %w", u, err)
	}
	body := buf.Bytes()
	if len(body) > maxStatsBytes {
		return fmt.Errorf("%s: %w: more than %d bytes", u, errTooLarge, maxStatsBytes)
	}
	if resp.StatusCode != http.StatusOK {
		// The body is the server's, which a tenant may control: never echoed.
		return &httpError{status: resp.StatusCode}
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("decoding %s: %w", u, err)
	}
	return nil
}

// defaultQueueClient serves readers built without a client (tests).
var defaultQueueClient = NewQueueClient()

// bodies are buffers for answers: a /stats of 2,000 topics is about 1 MB
// each tick, better not allocated anew.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBytes = 8 << 20

// maxProducers bounds the nsqds one lookup may name, each a request a tick.
const maxProducers = 64

type httpError struct{ status int }

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d", e.status) }

func (r *NSQReader) stats(ctx context.Context, host string) (*nsqStats, error) {
	var st nsqStats
	u := "http://" + host + "/stats?format=json&include_clients=false&include_mem=false"
	if err := r.get(ctx, u, &st); err != nil {
		return nil, fmt.Errorf("nsqd %s stats: %w", host, err)
	}
	if st.Data != nil {
		return st.Data.index(), nil
	}
	return st.index(), nil
}

func (r *NSQReader) lookup(ctx context.Context, lookupd, topic string) ([]string, error) {
	var res struct {
		Data      *json.RawMessage `json:"data"`
		Producers []struct {
			Broadcast string `json:"broadcast_address"`
			HTTPPort  int    `json:"http_port"`
		} `json:"producers"`
	}
	err := r.get(ctx, "http://"+lookupd+"/lookup?topic="+url.QueryEscape(topic), &res)
	var he *httpError
	if errors.As(err, &he) && he.status == http.StatusNotFound {
		return nil, nil // no nsqd carries the topic yet: an empty queue
	}
	if err != nil {
		return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
	}
	if res.Data != nil { // pre-1.0 wrapper
		if err := json.Unmarshal(*res.Data, &res); err != nil {
			return nil, fmt.Errorf("nsqlookupd %s lookup %s: decoding data: %w", lookupd, topic, err)
		}
	}
	if len(res.Producers) > maxProducers {
		return nil, fmt.Errorf("nsqlookupd %s lookup %s: %d nsqds, more than the %d read per topic", lookupd, topic, len(res.Producers), maxProducers)
	}
	var out []string
	for _, p := range res.Producers {
		a, err := producerAddr(p.Broadcast, p.HTTPPort)
		if err != nil {
			return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
		}
		out = append(out, a)
	}
	return out, nil
}
