// Package queue is how the loop reads queues: the Source interface that
// every kind of queue implements (one package per kind below this one),
// Sources, which hands each queue to the source of its scheme, and what
// every source shares so that every tenant rule holds for all of them: the
// endpoint policy (allow list, dial-time address check, no redirects, no
// proxy), fair per-namespace shares of read concurrency with deadlines
// that run from when a read is sent, bounded answers, per-host metrics,
// and errors a tenant may see (a class, never a byte of an answer).
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/egress"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Ref is one queue a tick reads, and the namespaces whose Deployments name
// it: its reads are charged to their shares.
type Ref struct {
	annotations.QueueRef
	Namespaces []string
	// Hold is the shortest scale-down delay of the members naming the
	// queue: what a source stopped seeing (an nsqd a lookupd no longer
	// announces) holds them no longer than that.
	Hold time.Duration
}

// Source reads the queues of its schemes.
type Source interface {
	// Read starts reading what refs need, once per server endpoint however
	// many refs name it, and returns at once; each Reading waits only for
	// the reads its own queue needs.
	Read(ctx context.Context, refs []Ref) policy.Readings
}

// Sources is a Source that hands each queue to the Source of its scheme.
// Schemes one Source reads (nsq:// and nsqlookupd://) go to it in one Read,
// so that it reads each server once however the queues reach it.
type Sources struct {
	by   map[string]Source
	plan Plan[[]sourceRefs]
}

// sourceRefs are the refs one Source reads, and the schemes they are of.
type sourceRefs struct {
	src     Source
	schemes []string
	refs    []Ref
	// elsewhere, for a Charger, is how many queue hosts (Target) each
	// namespace takes through the queues the other sources read.
	elsewhere map[string]int
}

// Charger is a Source whose reads contact hosts no ref names (the nsqds an
// nsqlookupd announces) and charges them to each namespace's host cap: on
// top of elsewhere, the hosts the namespace's queues of other sources take.
type Charger interface {
	ReadCharged(ctx context.Context, refs []Ref, elsewhere map[string]int) policy.Readings
}

// NewSources hands the queues of each scheme to its Source.
func NewSources(by map[string]Source) *Sources { return &Sources{by: by} }

// Read splits refs by Source and starts every source's read.
func (s *Sources) Read(ctx context.Context, refs []Ref) policy.Readings {
	out := readings{}
	for _, g := range s.plan.For(refs, s.split) {
		var rs policy.Readings
		if c, ok := g.src.(Charger); ok {
			rs = c.ReadCharged(ctx, g.refs, g.elsewhere)
		} else {
			rs = g.src.Read(ctx, g.refs)
		}
		for _, scheme := range g.schemes {
			out[scheme] = rs
		}
	}
	return out
}

// split groups refs by the Source that reads them (a scheme without one is
// left out: its queues read as "no source reads this scheme").
func (s *Sources) split(refs []Ref) []sourceRefs {
	index := map[Source]int{}
	var out []sourceRefs
	for _, r := range refs {
		src, ok := s.by[r.Scheme]
		if !ok {
			continue
		}
		i, seen := index[src]
		if !seen {
			i = len(out)
			index[src] = i
			out = append(out, sourceRefs{src: src})
		}
		g := &out[i]
		if !slices.Contains(g.schemes, r.Scheme) {
			g.schemes = append(g.schemes, r.Scheme)
		}
		g.refs = append(g.refs, r)
	}
	for i := range out {
		if _, ok := out[i].src.(Charger); !ok {
			continue
		}
		targets := map[string]map[string]bool{} // namespace -> its targets
		for j := range out {
			if j == i {
				continue
			}
			for _, r := range out[j].refs {
				for _, ns := range r.Namespaces {
					if targets[ns] == nil {
						targets[ns] = map[string]bool{}
					}
					targets[ns][Target(r.QueueRef)] = true
				}
			}
		}
		out[i].elsewhere = make(map[string]int, len(targets))
		for ns, ts := range targets {
			out[i].elsewhere[ns] = len(ts)
		}
	}
	return out
}

// Target is what a queue costs a tick in requests, as the per-namespace
// host cap counts it: an nsqd, a NATS server's monitoring port or a Redis
// server is one request however many queues it serves; an nsqlookupd is
// one lookup per topic, RabbitMQ one request per virtual host and
// Prometheus one per server, each its own.
func Target(q annotations.QueueRef) string {
	switch q.Scheme {
	case annotations.SchemeNSQLookupd:
		return q.Host + "/" + q.Name
	case annotations.SchemeRabbitMQ:
		return q.Scheme + "://" + q.Host + "/" + q.Sub
	case annotations.SchemePrometheus:
		return q.Scheme + "://" + q.Host
	}
	return q.Host
}

// Readiness is what Readings whose reads run in the background also tell:
// whether Reading(q) would return at once. The loop decides the groups
// whose readings are complete first, so that a group whose hosts hang
// waits on its own and never holds a worker another group needs.
type Readiness interface {
	// Pending is nil when Reading(q) would return at once, else a channel
	// closed when that may have changed (a read q waits on ended).
	Pending(q annotations.QueueRef) <-chan struct{}
}

// Open is ch while it is open, nil once it is closed; it never waits.
func Open(ch <-chan struct{}) <-chan struct{} {
	select {
	case <-ch:
		return nil
	default:
		return ch
	}
}

type readings map[string]policy.Readings

// Pending is the Readiness of the queue's scheme; nil when it cannot tell.
func (r readings) Pending(q annotations.QueueRef) <-chan struct{} {
	if rd, ok := r[q.Scheme].(Readiness); ok {
		return rd.Pending(q)
	}
	return nil
}

func (r readings) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	rs, ok := r[q.Scheme]
	if !ok {
		return policy.QueueReading{}, &ReadError{Role: q.Scheme, Host: q.Host, Class: "no source reads this scheme"}
	}
	return rs.Reading(q)
}

// Class is an error whose text a tenant may see: a class of failure, never
// a byte of an answer. Sources wrap their own (fmt.Errorf("%w: ...", c)).
type Class string

func (c Class) Error() string { return string(c) }

// ErrTooLarge marks an answer over the size bound.
const ErrTooLarge = Class("answer too large")

// ErrMalformed marks an answer that is not what the server of the scheme
// sends.
const ErrMalformed = Class("malformed answer")

// ReadError is a failed read, as the tenant whose queue it is may see it:
// the server's role, the address from their annotation, and a class of
// error. Unwrap gives the whole error, for the operator's logs.
type ReadError struct {
	Role, Host, Class string
	err               error
}

func (e *ReadError) Error() string { return e.Role + " " + e.Host + ": " + e.Class }
func (e *ReadError) Unwrap() error { return e.err }

// StatusError is an HTTP answer other than the one a read expects; its
// body, which a tenant may control, is never read.
type StatusError struct{ Status int }

func (e *StatusError) Error() string {
	switch e.Status {
	case http.StatusUnauthorized:
		return "HTTP 401: credentials required or refused"
	case http.StatusForbidden:
		return "HTTP 403: the credentials may not read this"
	}
	return fmt.Sprintf("HTTP %d", e.Status)
}

// Classify makes err a ReadError of role at host.
func Classify(role, host string, err error) error {
	var (
		c   Class
		he  *StatusError
		ne  net.Error
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
		cls string
	)
	switch {
	case errors.Is(err, egress.ErrNotAllowed):
		cls = "address not allowed by the queue endpoint policy"
	case errors.As(err, &c):
		cls = string(c)
	case errors.As(err, &he):
		cls = he.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		cls = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		cls = "connection refused"
	case errors.As(err, &se), errors.As(err, &te):
		cls = string(ErrMalformed)
	default:
		cls = "unreachable"
	}
	return &ReadError{Role: role, Host: host, Class: cls, err: err}
}

// Endpoint is a server read with one Secret's credentials (or none): what
// a source that reads a whole server at once reads once per tick.
type Endpoint struct{ Host, Secret string }

// EndpointOf is the endpoint q is read through.
func EndpointOf(q annotations.QueueRef) Endpoint { return Endpoint{q.Host, q.Secret} }

// ByEndpoint groups refs by the endpoint each is read through.
func ByEndpoint(refs []Ref) map[Endpoint][]Ref {
	return GroupBy(refs, func(r Ref) Endpoint { return EndpointOf(r.QueueRef) })
}

// GroupBy splits refs by key, each part allocated once at its size (a
// tick splits thousands of refs).
func GroupBy[K comparable](refs []Ref, key func(Ref) K) map[K][]Ref {
	n := map[K]int{}
	for _, r := range refs {
		n[key(r)]++
	}
	out := make(map[K][]Ref, len(n))
	for _, r := range refs {
		k := key(r)
		if out[k] == nil {
			out[k] = make([]Ref, 0, n[k])
		}
		out[k] = append(out[k], r)
	}
	return out
}

// Holdings are how many messages each consumer of a queue holds (delivered
// to it, not yet finished), by the host name the consumer reported and by
// the host part of its connection's address (kept only when one consumer
// alone connects from it).
type Holdings struct {
	ByHostname, ByAddress map[string]int64
}

// Consumer is one consumer's entry in a server's answer.
type Consumer struct {
	Hostname, Remote string // as the server reports them; Remote is host:port
	Held             int64
}

// MaxHolders bounds the consumers one queue's Holdings count.
const MaxHolders = 4096

// Holder is a Source that can tell what each consumer of a queue holds.
type Holder interface {
	Held(ctx context.Context, namespace string, q annotations.QueueRef) (Holdings, error)
}

// ErrNoHoldings is the answer for a queue whose source cannot tell what
// each consumer holds.
const ErrNoHoldings = Class("the queue's server does not say what each consumer holds")

// Held asks the Source of q's scheme what each of q's consumers holds.
func (s *Sources) Held(ctx context.Context, namespace string, q annotations.QueueRef) (Holdings, error) {
	h, ok := s.by[q.Scheme].(Holder)
	if !ok {
		return Holdings{}, ErrNoHoldings
	}
	return h.Held(ctx, namespace, q)
}

// Add counts the consumers cs in h, at most MaxHolders in all: a host name
// that is not one (DNS-1123) or an address that is not an IP is never a
// key, an address shared by several consumers is dropped (it tells none of
// them apart), and a negative count is none.
func (h *Holdings) Add(cs []Consumer) {
	if h.ByHostname == nil {
		h.ByHostname, h.ByAddress = map[string]int64{}, map[string]int64{}
	}
	for _, c := range cs {
		if len(h.ByHostname)+len(h.ByAddress)+2 > MaxHolders { // room for both keys
			return
		}
		held := max(c.Held, 0)
		if len(validation.IsDNS1123Subdomain(c.Hostname)) == 0 {
			h.ByHostname[c.Hostname] += held
		}
		host, _, err := net.SplitHostPort(c.Remote)
		if err != nil {
			continue
		}
		if _, err := netip.ParseAddr(host); err != nil {
			continue
		}
		if v, seen := h.ByAddress[host]; seen {
			if v >= 0 {
				h.ByAddress[host] = -1 // shared: marked, never matched
			}
			continue
		}
		h.ByAddress[host] = held
	}
}

// Merge adds o's counts to h's (a consumer of several queues holds their
// sum), at most MaxHolders in all.
func (h *Holdings) Merge(o Holdings) {
	if h.ByHostname == nil {
		h.ByHostname, h.ByAddress = map[string]int64{}, map[string]int64{}
	}
	for k, v := range o.ByHostname {
		if _, ok := h.ByHostname[k]; ok || len(h.ByHostname)+len(h.ByAddress) < MaxHolders {
			h.ByHostname[k] += v
		}
	}
	for k, v := range o.ByAddress {
		have, ok := h.ByAddress[k]
		switch {
		case !ok && len(h.ByHostname)+len(h.ByAddress) < MaxHolders:
			h.ByAddress[k] = v
		case ok && (have < 0 || v < 0):
			h.ByAddress[k] = -1
		case ok:
			h.ByAddress[k] = have + v
		}
	}
}

// Of is what the consumer with hostname or address holds, and whether
// one was seen.
func (h Holdings) Of(hostname, address string) (int64, bool) {
	if v, ok := h.ByHostname[hostname]; ok {
		return v, true
	}
	if v, ok := h.ByAddress[address]; ok && v >= 0 && address != "" {
		return v, true
	}
	return 0, false
}
