package annotations

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The queue schemes microscaling.com/queue accepts.
const (
	SchemeNSQ        = "nsq"        // one nsqd: nsq://HOST:PORT/TOPIC/CHANNEL
	SchemeNSQLookupd = "nsqlookupd" // every nsqd an nsqlookupd names for the topic
	SchemeRabbitMQ   = "rabbitmq"   // the management API: rabbitmq://HOST:PORT/VHOST/QUEUE
	SchemeRedis      = "redis"      // a list, or a stream's consumer group: redis://HOST:PORT/KEY[?group=GROUP]
	SchemeNATS       = "nats"       // a JetStream consumer, through the monitoring port: nats://HOST:PORT/STREAM/CONSUMER
	SchemePrometheus = "prometheus" // instant queries: prometheus://HOST:PORT?backlog=PROMQL[&arrivals=PROMQL]
)

// Schemes lists every queue scheme, in the order the docs give them.
var Schemes = []string{SchemeNSQ, SchemeNSQLookupd, SchemeRabbitMQ, SchemeRedis, SchemeNATS, SchemePrometheus}

// queueForms is what microscaling.com/queue takes, for error messages.
const queueForms = "comma-separated nsq://HOST:PORT/TOPIC/CHANNEL, nsqlookupd://HOST:PORT/TOPIC/CHANNEL, " +
	"rabbitmq://HOST:PORT/VHOST/QUEUE, redis://HOST:PORT/KEY[?group=GROUP], nats://HOST:PORT/STREAM/CONSUMER " +
	"or prometheus://HOST:PORT?backlog=PROMQL[&arrivals=PROMQL]"

// QueueRef is one queue address: a scheme, the host:port the controller
// reads, and two names whose meaning is the scheme's:
//
//	nsq, nsqlookupd  Name: topic          Sub: channel
//	rabbitmq         Name: queue          Sub: virtual host
//	redis            Name: key            Sub: consumer group (empty: a list)
//	nats             Name: stream         Sub: consumer
//	prometheus       Name: backlog query  Sub: arrivals query (empty: none)
type QueueRef struct {
	Scheme string
	Host   string // host:port
	Name   string
	Sub    string
	// Secret is the namespace/name of the Secret the queue is read with
	// (Spec.QualifySecret); empty: none.
	Secret string
}

// String renders the reference in the form Parse accepts.
func (q QueueRef) String() string {
	switch q.Scheme {
	case SchemeRabbitMQ:
		return q.Scheme + "://" + q.Host + "/" + url.PathEscape(q.Sub) + "/" + url.PathEscape(q.Name)
	case SchemeRedis:
		s := q.Scheme + "://" + q.Host + "/" + url.PathEscape(q.Name)
		if q.Sub != "" {
			s += "?group=" + url.QueryEscape(q.Sub)
		}
		return s
	case SchemePrometheus:
		s := q.Scheme + "://" + q.Host + "?backlog=" + url.QueryEscape(q.Name)
		if q.Sub != "" {
			s += "&arrivals=" + url.QueryEscape(q.Sub)
		}
		return s
	}
	return q.Scheme + "://" + q.Host + "/" + q.Name + "/" + q.Sub
}

// CountsArrivals reports whether the queue's server counts the messages
// that arrive (or that were done, from which arrivals follow). A queue
// that does not (a Redis list, a Prometheus queue without an arrivals
// query) is sized from its backlog alone, and cannot hold a wait target.
func (q QueueRef) CountsArrivals() bool {
	switch q.Scheme {
	case SchemeRedis, SchemePrometheus:
		return q.Sub != ""
	}
	return true
}

// nsqName is the NSQ rule for topic and channel names.
var nsqName = regexp.MustCompile(`^[.a-zA-Z0-9_-]{1,64}(#ephemeral)?$`)

// Bounds on the names of other queues.
const (
	maxQueueName  = 255  // RabbitMQ's queue and vhost names, NATS's names, Redis keys and groups here
	MaxQueryBytes = 1024 // one PromQL expression
)

func (p *parser) queues(v string) []QueueRef {
	var refs []QueueRef
	parts := strings.Split(v, ",")
	if len(parts) > maxQueues {
		p.fail(Queue, v, fmt.Sprintf("at most %d queues", maxQueues))
		return nil
	}
	for _, part := range parts {
		part = strings.TrimSpace(part)
		ref, problem := parseQueue(part)
		if problem != "" {
			p.fail(Queue, part, problem)
			continue
		}
		if slices.Contains(refs, ref) {
			p.fail(Queue, part, "each queue once")
			continue
		}
		refs = append(refs, ref)
	}
	return refs
}

// parseQueue reads one queue address; problem says what is wrong with it.
func parseQueue(s string) (ref QueueRef, problem string) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !slices.Contains(Schemes, scheme) {
		return ref, queueForms
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	hostPort := rest[:end]
	host, port, err := net.SplitHostPort(hostPort)
	if n, perr := strconv.Atoi(port); err != nil || host == "" || strings.ContainsAny(host, "@?#/") || perr != nil || n < 1 || n > 65535 {
		return ref, scheme + "://HOST:PORT must name a port from 1 to 65535"
	}
	rest = rest[end:]
	path, query, hasQuery := strings.Cut(strings.TrimPrefix(rest, "/"), "?")
	ref = QueueRef{Scheme: scheme, Host: hostPort}
	switch scheme {
	case SchemeNSQ, SchemeNSQLookupd:
		const want = "nsq://HOST:PORT/TOPIC/CHANNEL or nsqlookupd://HOST:PORT/TOPIC/CHANNEL, topic and channel of 1-64 characters [.a-zA-Z0-9_-]"
		segs := strings.Split(path, "/")
		if hasQuery || len(segs) != 2 || !nsqName.MatchString(segs[0]) || !nsqName.MatchString(segs[1]) {
			return ref, want
		}
		ref.Name, ref.Sub = segs[0], segs[1]
	case SchemeRabbitMQ:
		const want = "rabbitmq://HOST:PORT/VHOST/QUEUE (the management API's port; the default vhost / written %2F), vhost and queue of 1-255 bytes without control characters"
		segs := strings.Split(path, "/")
		if hasQuery || len(segs) != 2 {
			return ref, want
		}
		vhost, err1 := url.PathUnescape(segs[0])
		queue, err2 := url.PathUnescape(segs[1])
		if err1 != nil || err2 != nil || !plainName(vhost, maxQueueName) || !plainName(queue, maxQueueName) {
			return ref, want
		}
		ref.Name, ref.Sub = queue, vhost
	case SchemeRedis:
		const want = "redis://HOST:PORT/KEY for a list, or redis://HOST:PORT/KEY?group=GROUP for a stream's consumer group; key and group of 1-255 bytes without control characters (a / in a key written %2F)"
		key, err := url.PathUnescape(path)
		if err != nil || strings.Contains(path, "/") || !plainName(key, maxQueueName) {
			return ref, want
		}
		ref.Name = key
		if hasQuery {
			vs, err := url.ParseQuery(query)
			g := vs["group"]
			if err != nil || len(vs) != 1 || len(g) != 1 || !plainName(g[0], maxQueueName) {
				return ref, want
			}
			ref.Sub = g[0]
		}
	case SchemeNATS:
		const want = "nats://HOST:PORT/STREAM/CONSUMER (the monitoring port), stream and consumer of 1-255 printable characters without space . * > / \\"
		segs := strings.Split(path, "/")
		if hasQuery || len(segs) != 2 || !natsName(segs[0]) || !natsName(segs[1]) {
			return ref, want
		}
		ref.Name, ref.Sub = segs[0], segs[1]
	case SchemePrometheus:
		want := fmt.Sprintf("prometheus://HOST:PORT?backlog=PROMQL[&arrivals=PROMQL], each query URL-encoded (a comma written %%2C) and at most %d bytes; "+
			"backlog gives the messages waiting, arrivals a counter of the messages that arrived", MaxQueryBytes)
		if path != "" || !hasQuery {
			return ref, want
		}
		vs, err := url.ParseQuery(query)
		if err != nil {
			return ref, want
		}
		b, a := vs["backlog"], vs["arrivals"]
		if len(b) != 1 || len(a) > 1 || len(vs) != 1+len(a) || !query1(b[0]) || (len(a) == 1 && !query1(a[0])) {
			return ref, want
		}
		ref.Name = b[0]
		if len(a) == 1 {
			ref.Sub = a[0]
		}
	}
	return ref, ""
}

// plainName reports whether s is 1-max bytes of UTF-8 without control
// characters.
func plainName(s string, max int) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, unicode.IsControl)
}

// natsName is JetStream's rule for stream and consumer names.
func natsName(s string) bool {
	if s == "" || len(s) > maxQueueName {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c > '~' || strings.IndexByte(".*>/\\", c) >= 0 {
			return false
		}
	}
	return true
}

// query1 reports whether s may be a PromQL expression: bounded, UTF-8,
// no control characters but white space.
func query1(s string) bool {
	if strings.TrimSpace(s) == "" || len(s) > MaxQueryBytes || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) && !unicode.IsSpace(r) })
}
