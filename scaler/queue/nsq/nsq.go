// Package nsq is the queue source for NSQ: one /stats per nsqd per tick
// however many groups name it, nsqlookupd resolution (with the nsqds that
// left it held while they may still carry a topic), and bounded streaming
// decoding of both answers.
package nsq

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
)

// nsqStats is the part of nsqd's GET /stats?format=json that we read. nsqd
// 1.x returns it bare; before 1.0 it was wrapped in {"data": ...}.
type nsqStats struct {
	Data   *nsqStats  `json:"data"`
	Topics []nsqTopic `json:"topics"`

	byName map[string]*nsqTopic // Topics by name, built once per read
	at     time.Time            // when the answer began to arrive
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
	// Clients are read only for Held (include_clients=true).
	Clients []nsqClient `json:"clients"`
}

type nsqClient struct {
	Hostname string `json:"hostname"`
	Remote   string `json:"remote_address"`
	InFlight int64  `json:"in_flight_count"`
}

// NSQReader reads nsqd /stats, once per nsqd per Read however many queues
// name it, and resolves nsqlookupd addresses to the nsqds that carry a topic.
type NSQReader struct {
	// Fetcher runs every request under the shared bounds.
	Fetcher *queue.Fetcher
	// HostsPerNamespace, when above 0, is the queue hosts one namespace
	// may make the controller contact: the nsqds and lookups it names, the
	// hosts its queues of other schemes take (ReadCharged), and the nsqds
	// its lookups announced last time (see admit).
	HostsPerNamespace int

	mu sync.Mutex // guards vanished and announced
	// vanished are nsqds an nsqlookupd stopped announcing for a topic
	// while they may still hold its messages, with when each was first
	// missed: read until they hold none, for at most the lookup's hold.
	vanished map[lookupKey]map[string]time.Time
	// announced are the nsqds each lookup named last time.
	announced map[lookupKey]announcement

	plan queue.Plan[plan]
}

type announcement struct {
	hosts map[string]bool
	at    time.Time
}

// Snapshot is one tick's reading of every nsqd that some queue names. Its
// reads run in the background: Reading waits only for the hosts its queue
// needs, so a slow nsqd or nsqlookupd delays only the groups that read it.
type Snapshot struct {
	mu sync.Mutex // guards stats
	// stats by nsqd host:port; each fetch is started once per Read.
	stats map[string]*fetch
	// lookups by nsqlookupd host:port and topic: one tenant's failed lookup
	// (or an nsq:// read of a lookupd's port) never fails another tenant's
	// topic on the same nsqlookupd.
	lookups map[lookupKey]*lookupFetch
}

// fetch is one nsqd's /stats; st and err are set before done closes.
type fetch struct {
	done chan struct{}
	st   *nsqStats
	err  error
}

// lookupFetch is one nsqlookupd topic's nsqds (the announced ones and those
// that vanished while holding its messages); set before done closes.
type lookupFetch struct {
	done      chan struct{}
	producers []string
	err       error
}

type lookupKey struct{ lookupd, topic string }

// plan is what a set of refs asks of NSQ: the topics named on each nsqd
// and through lookups, and the namespaces each read is charged to.
type plan struct {
	direct   map[string]map[string]bool // nsqd host -> its topics named by nsq:// queues
	lookedUp map[string]bool            // every topic looked up: any nsqd may carry them
	hosts    map[string][]string        // nsqd host named -> the namespaces naming it
	lookups  map[lookupKey][]string     // lookup -> the namespaces naming it
	// holds bound how long each lookup's vanished nsqds are read: the
	// shortest scale-down delay of its members (Ref.Hold).
	holds map[lookupKey]time.Duration
}

func newPlan(refs []queue.Ref) plan {
	p := plan{direct: map[string]map[string]bool{}, lookedUp: map[string]bool{}, hosts: map[string][]string{}, lookups: map[lookupKey][]string{}, holds: map[lookupKey]time.Duration{}}
	named := map[string][]queue.Ref{}
	looked := map[lookupKey][]queue.Ref{}
	for _, q := range refs {
		if q.Scheme == annotations.SchemeNSQLookupd {
			k := lookupKey{q.Host, q.Name}
			if h, ok := p.holds[k]; !ok || q.Hold < h {
				p.holds[k] = q.Hold
			}
			looked[k] = append(looked[k], q)
			p.lookedUp[q.Name] = true
			continue
		}
		if p.direct[q.Host] == nil {
			p.direct[q.Host] = map[string]bool{}
		}
		p.direct[q.Host][q.Name] = true
		named[q.Host] = append(named[q.Host], q)
	}
	for host, rs := range named {
		p.hosts[host] = queue.Namespaces(rs...)
	}
	for k, rs := range looked {
		p.lookups[k] = queue.Namespaces(rs...)
	}
	return p
}

// Read starts reading what refs need and returns at once; each Reading
// waits for its own hosts. An nsqd's read is charged to the namespaces
// that name it, and an nsqd a lookup announces to those of the lookup.
func (r *NSQReader) Read(ctx context.Context, refs []queue.Ref) policy.Readings {
	return r.ReadCharged(ctx, refs, nil)
}

// ReadCharged is Read, with the queue hosts each namespace takes through
// other sources (queue.Charger): the nsqds its lookups announce count on
// top of them toward HostsPerNamespace.
func (r *NSQReader) ReadCharged(ctx context.Context, refs []queue.Ref, elsewhere map[string]int) policy.Readings {
	s := &Snapshot{stats: map[string]*fetch{}, lookups: map[lookupKey]*lookupFetch{}}
	p := r.plan.For(refs, newPlan)
	direct, lookedUp := p.direct, p.lookedUp
	r.Fetcher.Forget()
	r.expireLookups(p.lookups)
	start := func(host string, namespaces []string) *fetch {
		s.mu.Lock()
		defer s.mu.Unlock()
		if f, ok := s.stats[host]; ok {
			return f
		}
		mine := direct[host]
		topics := func(topic string) bool { return mine[topic] || lookedUp[topic] }
		f := &fetch{done: make(chan struct{})}
		s.stats[host] = f
		go func() {
			defer close(f.done)
			st, err := r.stats(ctx, namespaces, host, topics)
			if err != nil {
				f.err = queue.Classify("nsqd", host, err)
				return
			}
			f.st = st
		}()
		return f
	}
	for host, namespaces := range p.hosts {
		start(host, namespaces)
	}
	charged, refused := r.admit(p, elsewhere)
	for k, namespaces := range charged {
		lf := &lookupFetch{done: make(chan struct{})}
		s.lookups[k] = lf
		go func() {
			defer close(lf.done)
			ps, err := r.lookup(ctx, namespaces, k.lookupd, k.topic)
			if err != nil {
				lf.err = queue.Classify("nsqlookupd", k.lookupd, err)
				return
			}
			ps, vanished := r.keepVanished(k, ps, p.holds[k])
			if refused[k] {
				// Looked up (it counts as one host) so that the next tick
				// charges what it announces now; its nsqds are not read.
				lf.err = queue.Classify("nsqlookupd", k.lookupd, queue.Class(fmt.Sprintf(
					"nsqds not read: those it announces would take the namespace past %d queue hosts", r.HostsPerNamespace)))
				return
			}
			fetches := map[string]*fetch{}
			for _, p := range ps {
				fetches[p] = start(p, namespaces)
			}
			for h := range vanished {
				<-fetches[h].done
			}
			r.forgetDrained(k, vanished, fetches)
			lf.producers = ps
		}()
	}
	return s
}

// admit charges each lookup's announced nsqds (as the last lookup named
// them) to the namespaces naming it, on top of the hosts they name and
// those they take elsewhere, lookups in sorted order, and returns
// the namespaces each lookup is charged to. A namespace past
// HostsPerNamespace with them is not charged; a lookup that no namespace
// naming it can afford is refused. A namespace over its cap thus cannot
// make another lose a lookup they share: the read is charged to those with
// room.
func (r *NSQReader) admit(p plan, elsewhere map[string]int) (charged map[lookupKey][]string, refused map[lookupKey]bool) {
	if r.HostsPerNamespace <= 0 {
		return p.lookups, nil
	}
	hosts := map[string]map[string]bool{} // namespace -> the hosts it has us contact
	add := func(ns, h string) {
		if hosts[ns] == nil {
			hosts[ns] = map[string]bool{}
		}
		hosts[ns][h] = true
	}
	for h, nss := range p.hosts {
		for _, ns := range nss {
			add(ns, h)
		}
	}
	for k, nss := range p.lookups {
		for _, ns := range nss {
			add(ns, k.lookupd+"/"+k.topic)
		}
	}
	keys := slices.SortedFunc(maps.Keys(p.lookups), func(a, b lookupKey) int {
		return cmp.Or(strings.Compare(a.lookupd, b.lookupd), strings.Compare(a.topic, b.topic))
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	charged, refused = make(map[lookupKey][]string, len(keys)), map[lookupKey]bool{}
	for _, k := range keys {
		announced := maps.Clone(r.announced[k].hosts)
		for h := range r.vanished[k] {
			if announced == nil {
				announced = map[string]bool{}
			}
			announced[h] = true
		}
		var payers []string
		for _, ns := range p.lookups[k] {
			n := elsewhere[ns] + len(hosts[ns])
			for h := range announced {
				if !hosts[ns][h] {
					n++
				}
			}
			if n > r.HostsPerNamespace {
				continue
			}
			payers = append(payers, ns)
			for h := range announced {
				add(ns, h)
			}
		}
		if len(payers) == 0 {
			refused[k], payers = true, p.lookups[k]
		}
		charged[k] = payers
	}
	return charged, refused
}

// expireLookups forgets what lookups no read has named for queue.ForgetAfter.
func (r *NSQReader) expireLookups(keys map[lookupKey][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vanished == nil {
		r.vanished, r.announced = map[lookupKey]map[string]time.Time{}, map[lookupKey]announcement{}
	}
	now := r.now()
	for k, a := range r.announced {
		if _, named := keys[k]; !named && now.Sub(a.at) > queue.ForgetAfter {
			delete(r.announced, k)
			delete(r.vanished, k)
		}
	}
}

// keepVanished adds to a successful lookup the nsqds it named before but
// not now (one that left, or a topic the lookupd forgot): their messages
// still wait, so they are read until they hold none of the topic; one that
// cannot be read holds the member rather than counting zero, but only for
// hold, the shortest scale-down delay of the lookup's members: an nsqd that registered for a topic on a shared lookupd and
// went away (a phantom) cannot hold the topic's readers for longer. It
// returns the producers to read and the vanished ones among them.
func (r *NSQReader) keepVanished(k lookupKey, ps []string, hold time.Duration) ([]string, map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	named := map[string]bool{}
	for _, p := range ps {
		named[p] = true
	}
	gone := r.vanished[k]
	for p := range r.announced[k].hosts {
		if _, ok := gone[p]; !named[p] && !ok {
			if gone == nil {
				gone = map[string]time.Time{}
			}
			gone[p] = now
		}
	}
	reading := map[string]bool{}
	for p, since := range gone {
		if named[p] || len(ps) >= maxProducers || now.Sub(since) > hold {
			delete(gone, p) // back, no room to track it, or held long enough
			continue
		}
		ps = append(ps, p)
		reading[p] = true
	}
	r.announced[k] = announcement{named, r.now()}
	if len(gone) == 0 {
		delete(r.vanished, k)
		return ps, nil
	}
	r.vanished[k] = gone
	return ps, reading
}

// forgetDrained stops reading the vanished nsqds of a lookup that hold none
// of its topic.
func (r *NSQReader) forgetDrained(k lookupKey, vanished map[string]bool, fetches map[string]*fetch) {
	if len(vanished) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for h := range vanished {
		f := fetches[h]
		if f.err != nil {
			continue // unreadable: keep holding
		}
		if t, ok := f.st.byName[k.topic]; !ok || topicBacklog(t) == 0 {
			delete(r.vanished[k], h)
		}
	}
	if len(r.vanished[k]) == 0 {
		delete(r.vanished, k) // also when a newer read replaced it
	}
}

// topicBacklog is every message of a topic on one nsqd, in any channel.
func topicBacklog(t *nsqTopic) int64 {
	n := t.Depth
	for _, c := range t.Channels {
		n += c.Depth + c.InFlight + c.Deferred
	}
	return n
}

func (r *NSQReader) now() time.Time { return r.Fetcher.Now() }

// Pending is nil when Reading(q) would return at once: its lookup and the
// reads of its nsqds are done (or were never started); else the done
// channel of the first still running.
func (s *Snapshot) Pending(q annotations.QueueRef) <-chan struct{} {
	hosts := []string{q.Host}
	if q.Scheme == annotations.SchemeNSQLookupd {
		lf, ok := s.lookups[lookupKey{q.Host, q.Name}]
		if !ok {
			return nil
		}
		if ch := queue.Open(lf.done); ch != nil {
			return ch
		}
		hosts = lf.producers
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range hosts {
		if f, ok := s.stats[h]; ok {
			if ch := queue.Open(f.done); ch != nil {
				return ch
			}
		}
	}
	return nil
}

// Reading sums a queue over its nsqds, waiting for their reads. Any nsqd
// that could not be read makes the whole reading fail: a partial sum would
// look like a shrinking backlog.
func (s *Snapshot) Reading(q annotations.QueueRef) (policy.QueueReading, error) {
	hosts := []string{q.Host}
	if q.Scheme == "nsqlookupd" {
		lf, ok := s.lookups[lookupKey{q.Host, q.Name}]
		if !ok {
			return policy.QueueReading{}, fmt.Errorf("nsqlookupd %s: not read", q.Host)
		}
		<-lf.done
		if lf.err != nil {
			return policy.QueueReading{}, lf.err
		}
		hosts = lf.producers
	}
	var out policy.QueueReading
	for _, h := range hosts {
		s.mu.Lock()
		f, ok := s.stats[h]
		s.mu.Unlock()
		if !ok {
			return policy.QueueReading{}, fmt.Errorf("nsqd %s: not read", h)
		}
		<-f.done
		if f.err != nil {
			return policy.QueueReading{}, f.err
		}
		here := policy.QueueReading{At: f.st.at}
		if t, ok := f.st.byName[q.Name]; ok { // no such topic on this nsqd: nothing waits there
			if i := slices.IndexFunc(t.Channels, func(c nsqChannel) bool { return c.Name == q.Sub }); i >= 0 {
				c := t.Channels[i]
				here.Backlog, here.Waiting, here.Arrived, here.Consumers = c.Depth+c.InFlight+c.Deferred, c.Depth, c.MessageCount, c.ClientCount
			} else {
				// No channel yet: messages wait in the topic.
				here.Backlog, here.Waiting, here.Arrived = t.Depth, t.Depth, t.MessageCount
			}
		}
		out = out.Plus(here)
	}
	return out, nil
}

// maxProducers bounds the nsqds one lookup may name, each a request a tick.
const maxProducers = 64

func (r *NSQReader) stats(ctx context.Context, namespaces []string, host string, topics func(string) bool) (*nsqStats, error) {
	var st *nsqStats
	u := "http://" + host + "/stats?format=json&include_clients=false&include_mem=false"
	var at time.Time
	err := r.Fetcher.GetJSON(ctx, namespaces, host, u, nil, func(dec *json.Decoder) (err error) {
		at = r.now() // nsqd counted as it answered: the rates are per this time, not the tick's
		st, err = decodeStats(dec, topics)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nsqd %s stats: %w", host, err)
	}
	st.at = at
	return st.index(), nil
}

func (r *NSQReader) lookup(ctx context.Context, namespaces []string, lookupd, topic string) ([]string, error) {
	var ps []producer
	err := r.Fetcher.GetJSON(ctx, namespaces, lookupd, "http://"+lookupd+"/lookup?topic="+url.QueryEscape(topic), nil, func(dec *json.Decoder) (err error) {
		ps, err = decodeLookup(dec)
		return err
	})
	var he *queue.StatusError
	if errors.As(err, &he) && he.Status == http.StatusNotFound {
		return nil, nil // no nsqd carries the topic yet: an empty queue
	}
	if err != nil {
		return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
	}
	var out []string
	for _, p := range ps {
		a, err := producerAddr(p.Broadcast, p.HTTPPort)
		if err != nil {
			return nil, fmt.Errorf("nsqlookupd %s lookup %s: %w", lookupd, topic, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// producerAddr checks an nsqd address that an nsqlookupd announced: a host
// name or IP and a port, nothing that could carry a path or credentials.
func producerAddr(host string, port int) (string, error) {
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: port out of range", errBadProducer)
	}
	if _, err := netip.ParseAddr(host); err != nil && len(validation.IsDNS1123Subdomain(host)) > 0 {
		return "", fmt.Errorf("%w: not a host name or IP", errBadProducer)
	}
	return net.JoinHostPort(host, fmt.Sprint(port)), nil
}

// errBadProducer marks an nsqd address an nsqlookupd announced that is not
// a plain host:port.
const errBadProducer = queue.Class("invalid nsqd address from nsqlookupd")

// Held reads what each consumer of q's channel holds in flight, from every
// nsqd q names (an nsqlookupd's, up to maxProducers), by the host name the
// consumer reported (go-nsq sends the machine's: a pod's name) and by its
// address. The reads are charged to namespace like any other.
func (r *NSQReader) Held(ctx context.Context, namespace string, q annotations.QueueRef) (queue.Holdings, error) {
	hosts := []string{q.Host}
	if q.Scheme == annotations.SchemeNSQLookupd {
		ps, err := r.lookup(ctx, []string{namespace}, q.Host, q.Name)
		if err != nil {
			return queue.Holdings{}, err
		}
		if len(ps) > maxProducers {
			return queue.Holdings{}, errTooManyProducers
		}
		hosts = ps
	}
	var h queue.Holdings
	for _, host := range hosts {
		u := "http://" + host + "/stats?format=json&include_mem=false&include_clients=true&topic=" + url.QueryEscape(q.Name) + "&channel=" + url.QueryEscape(q.Sub)
		var st *nsqStats
		err := r.Fetcher.GetJSON(ctx, []string{namespace}, host, u, nil, func(dec *json.Decoder) (err error) {
			st, err = decodeStats(dec, func(topic string) bool { return topic == q.Name })
			return err
		})
		if err != nil {
			return queue.Holdings{}, fmt.Errorf("nsqd %s clients: %w", host, err)
		}
		for _, t := range st.Topics {
			for _, c := range t.Channels {
				if c.Name != q.Sub {
					continue
				}
				cs := make([]queue.Consumer, 0, min(len(c.Clients), queue.MaxHolders))
				for _, cl := range c.Clients[:min(len(c.Clients), queue.MaxHolders)] {
					cs = append(cs, queue.Consumer{Hostname: cl.Hostname, Remote: cl.Remote, Held: cl.InFlight})
				}
				h.Add(cs)
			}
		}
	}
	return h, nil
}
