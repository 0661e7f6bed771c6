// Package redis is the queue source for Redis: a list's length, or a
// stream consumer group's lag, pending entries and entries read (XINFO
// GROUPS, Redis 7.0+), read in one pipeline per server per tick however
// many queues name it, over a connection of that read's own that is
// dialled under the endpoint policy and reads at most the answer bound.
package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

func init() {
	// go-redis logs dial failures on its own; every failure comes back
	// through a command's result here, classed, and is logged once by the
	// loop. Nothing else in the controller uses go-redis.
	goredis.SetLogger(quiet{})
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// Reader reads Redis queues.
type Reader struct {
	// Fetcher bounds every read (slots, shares, timeout, answer size).
	Fetcher *queue.Fetcher
	// Dial dials a server; the endpoint policy's (queue.Policy.DialContext).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Read starts one pipeline per server and returns at once.
func (r *Reader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	r.Fetcher.Forget()
	s := snapshot{}
	for e, rs := range queue.ByEndpoint(refs) {
		h := &hostRead{done: make(chan struct{}), got: map[annotations.QueueRef]policy.QueueReading{}}
		s[e] = h
		host := e.Host
		go func() {
			defer close(h.done)
			err := r.Fetcher.Do(ctx, queue.Namespaces(rs...), host, func(ctx context.Context) error {
				return r.read(ctx, host, rs, h)
			})
			if err != nil {
				h.err = queue.Classify("redis", host, err)
			}
		}()
	}
	return s
}

type snapshot map[queue.Endpoint]*hostRead

// hostRead is one server's pipeline; got and err are set before done closes.
type hostRead struct {
	done chan struct{}
	got  map[annotations.QueueRef]policy.QueueReading
	err  error
	// bad holds the queues the server refused (a wrong type, no such group).
	bad map[annotations.QueueRef]error
}

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
		return policy.QueueReading{}, fmt.Errorf("redis %s: not read", q.Host)
	}
	<-h.done
	if h.err != nil {
		return policy.QueueReading{}, h.err
	}
	if err := h.bad[q]; err != nil {
		return policy.QueueReading{}, err
	}
	return h.got[q], nil
}

// Classes of what a server says about one queue; its own words, which a
// tenant may set, are never passed on.
const (
	errWrongType = queue.Class("the key holds another type: a list, or a stream with ?group=")
	errNoGroup   = queue.Class("no such consumer group on the stream")
	errLag       = queue.Class("Redis cannot tell the group's lag (entries deleted from the stream)")
	errRefused   = queue.Class("the server refused the command")
	errAuth      = queue.Class("authentication required or refused")
)

func (r *Reader) read(ctx context.Context, host string, rs []queue.Ref, h *hostRead) error {
	creds, err := r.Fetcher.CredentialsFor(ctx, rs[0].QueueRef)
	if err != nil {
		return err
	}
	limit := r.Fetcher.MaxAnswer()
	c := goredis.NewClient(&goredis.Options{
		Addr: host, Username: creds.Username, Password: creds.Password,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := r.Dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &boundedConn{Conn: conn, left: limit}, nil
		},
		// One connection for this read, closed with it; no retries: the
		// next tick is the retry.
		PoolSize: 1, MaxRetries: -1, DialerRetries: 1, DisableIdentity: true,
		ContextTimeoutEnabled: true, Protocol: 2,
		DialTimeout: r.Fetcher.Timeout, ReadTimeout: r.Fetcher.Timeout, WriteTimeout: r.Fetcher.Timeout,
	})
	defer c.Close()
	pipe := c.Pipeline()
	lens := map[annotations.QueueRef]*goredis.IntCmd{}
	groups := map[annotations.QueueRef]*goredis.XInfoGroupsCmd{}
	for _, q := range rs {
		if q.Sub == "" {
			lens[q.QueueRef] = pipe.LLen(ctx, q.Name)
		} else {
			groups[q.QueueRef] = pipe.XInfoGroups(ctx, q.Name)
		}
	}
	at := r.Fetcher.Now()
	_, err = pipe.Exec(ctx)
	if c := serverClass(err); errors.Is(c, errAuth) {
		// Refused before any command ran: the commands carry no error of
		// their own (a stream's groups would read as none).
		return c
	}
	if err != nil && !isServerError(err) {
		var be *boundError
		if errors.As(err, &be) {
			return fmt.Errorf("%w: more than %d bytes", queue.ErrTooLarge, limit)
		}
		return err
	}
	h.bad = map[annotations.QueueRef]error{}
	for q, cmd := range lens {
		n, err := cmd.Result()
		if err != nil {
			h.bad[q] = queue.Classify("redis", host, serverClass(err))
			continue
		}
		// A list counts nothing but its length: no arrivals, no consumers.
		h.got[q] = policy.QueueReading{Backlog: n, Waiting: n, NoArrivals: true, At: at}
	}
	for q, cmd := range groups {
		gs, err := cmd.Result()
		if err != nil && strings.Contains(err.Error(), "no such key") {
			h.got[q] = policy.QueueReading{At: at} // no stream yet: nothing waits
			continue
		}
		if err != nil {
			h.bad[q] = queue.Classify("redis", host, serverClass(err))
			continue
		}
		i := indexGroup(gs, q.Sub)
		switch {
		case i < 0:
			h.bad[q] = queue.Classify("redis", host, errNoGroup)
		case gs[i].Lag < 0:
			h.bad[q] = queue.Classify("redis", host, errLag)
		default:
			g := gs[i]
			// Entries read and those not yet delivered are every entry that
			// arrived; consumers stay unknown (a group lists every consumer
			// that ever read, gone or not).
			h.got[q] = policy.QueueReading{Backlog: g.Lag + g.Pending, Waiting: g.Lag, Arrived: g.EntriesRead + g.Lag, At: at}
		}
	}
	return nil
}

func indexGroup(gs []goredis.XInfoGroup, name string) int {
	for i, g := range gs {
		if g.Name == name {
			return i
		}
	}
	return -1
}

// isServerError reports whether err is only the server's refusal of some
// commands of the pipeline (each command then carries its own).
func isServerError(err error) bool {
	var re goredis.Error
	return errors.As(err, &re) && !errors.Is(err, context.DeadlineExceeded)
}

// serverClass maps a server's refusal of one command to a class.
func serverClass(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "WRONGTYPE"):
		return errWrongType
	case strings.HasPrefix(msg, "NOAUTH"), strings.HasPrefix(msg, "WRONGPASS"), strings.HasPrefix(msg, "NOPERM"):
		return errAuth
	}
	var re goredis.Error
	if errors.As(err, &re) {
		return errRefused
	}
	return err
}

// boundedConn fails a read once the connection has delivered more than
// the answer bound: a key or a group list a tenant made huge cannot make
// the controller hold it.
type boundedConn struct {
	net.Conn
	left int64
}

type boundError struct{}

func (*boundError) Error() string { return "answer bound reached" }

func (c *boundedConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, &boundError{}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	return n, err
}
