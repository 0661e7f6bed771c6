// Package annotations is the microscaling.com/* contract: the keys a user puts
// on a Deployment, their defaults, and Parse, which turns them into a typed
// Spec or reports every problem at once, each naming the key, the bad value
// and what would be valid. It does no I/O.
package annotations

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Prefix starts every key of the contract.
const Prefix = "microscaling.com/"

// ImageLabelsPrefix starts the per-container annotations that label sync
// writes with an image's other labels.
const ImageLabelsPrefix = "image-labels.microscaling.com/"

// Ours reports whether an annotation key is microscaling's: a key of the
// contract or one label sync writes. Nothing else of a Deployment's
// annotations is kept, read or written.
func Ours(key string) bool {
	return strings.HasPrefix(key, Prefix) || strings.HasPrefix(key, ImageLabelsPrefix)
}

// The keys of the contract.
const (
	Group             = Prefix + "group"
	Priority          = Prefix + "priority"
	Rule              = Prefix + "rule"
	Queue             = Prefix + "queue"
	QueueSecret       = Prefix + "queue-secret"
	TargetQueueLength = Prefix + "target-queue-length"
	TargetWait        = Prefix + "target-wait"
	MinReplicas       = Prefix + "min-replicas"
	MaxReplicas       = Prefix + "max-replicas"
	MaxDelta          = Prefix + "max-delta"
	ScaleUpLimit      = Prefix + "scale-up-limit"
	ScaleDownLimit    = Prefix + "scale-down-limit"
	ScaleDownDelay    = Prefix + "scale-down-delay"
	FallbackReplicas  = Prefix + "fallback-replicas"
	FallbackAfter     = Prefix + "fallback-after"
	GroupMaxReplicas  = Prefix + "group-max-replicas"
	Paused            = Prefix + "paused"
	SyncLabels        = Prefix + "sync-labels"
)

// Keys lists every key of the contract, in the order the docs give them.
var Keys = []string{
	Group, Priority, Rule, Queue, QueueSecret, TargetQueueLength, TargetWait, MinReplicas, MaxReplicas,
	MaxDelta, ScaleUpLimit, ScaleDownLimit, ScaleDownDelay, FallbackReplicas, FallbackAfter, GroupMaxReplicas, Paused, SyncLabels,
}

// Limits on values, so that no input can overflow the arithmetic downstream.
const (
	MaxPriority       = 1000
	MaxReplicaCount   = 100000
	MaxTarget         = 1 << 40
	MaxScaleDownDelay = 24 * time.Hour
	MinFallbackAfter  = time.Second
	MinTargetWait     = 100 * time.Millisecond
	MaxTargetWait     = 24 * time.Hour
	MaxValueLength    = 2048
	maxQueues         = 16
)

// DefaultScaleDownDelay applies when scale-down-delay is not set.
const DefaultScaleDownDelay = 30 * time.Second

// DefaultFallbackAfter applies when fallback-replicas is set and
// fallback-after is not.
const DefaultFallbackAfter = 30 * time.Second

// RuleKind says how a member's replicas are decided.
type RuleKind string

const (
	// RuleQueue holds the member's queue backlog near its target.
	RuleQueue RuleKind = "queue"
	// RuleRemainder fills the room its group leaves spare.
	RuleRemainder RuleKind = "remainder"
)

// Spec is the parsed, validated contract of one Deployment.
type Spec struct {
	Group             string
	Priority          int32
	Rule              RuleKind
	Queues            []QueueRef
	TargetQueueLength int64         // 0: none (target-wait alone)
	TargetWait        time.Duration // 0: none
	MinReplicas       int32
	MaxReplicas       int32
	MaxDelta          int32 // 0: no limit
	// ScaleUpLimit and ScaleDownLimit bound the change in any window of
	// their period; zero: none.
	ScaleUpLimit, ScaleDownLimit RateLimit
	ScaleDownDelay               time.Duration
	// FallbackReplicas are the replicas asked for once the queues have
	// been unreadable for FallbackAfter; FallbackAfter 0: no fallback (the
	// replicas are held).
	FallbackReplicas int32
	FallbackAfter    time.Duration
	GroupMaxReplicas int32 // 0: no group budget
	Paused           bool
	SyncLabels       bool
	// QueueSecret names a Secret of the Deployment's namespace holding the
	// credentials its queues are read with; empty: none.
	QueueSecret string
}

// RateLimit is at most N replicas (or N percent of them, when Percent)
// of change within any Period. The zero value is no limit.
type RateLimit struct {
	N       int32
	Percent bool
	Period  time.Duration
}

// Set reports whether l limits anything.
func (l RateLimit) Set() bool { return l.Period > 0 }

func (l RateLimit) String() string {
	if !l.Set() {
		return ""
	}
	pct := ""
	if l.Percent {
		pct = "%"
	}
	return fmt.Sprintf("%d%s/%s", l.N, pct, l.Period)
}

// Limits of rate limits: HPA's behavior policies allow periods up to 30
// minutes.
const (
	MinLimitPeriod = time.Second
	MaxLimitPeriod = time.Hour
	MaxLimitPct    = 10000
)

// FieldError is one problem with one annotation.
type FieldError struct {
	Key   string
	Value string
	Want  string
}

func (e *FieldError) Error() string {
	v := e.Value
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return fmt.Sprintf("%s=%q: %s", e.Key, v, e.Want)
}

// Managed reports whether a Deployment with these annotations is managed:
// it carries microscaling.com/rule or microscaling.com/queue.
func Managed(ann map[string]string) bool {
	_, rule := ann[Rule]
	_, queue := ann[Queue]
	return rule || queue
}

// GroupKey is the key of the group of a managed Deployment: its namespace
// and group (the Deployment's name by default). A group value that is not a
// DNS-1123 label gives the key namespace + "/" and false: such members are
// listed (their annotations are reported) but never decided.
func GroupKey(namespace, name string, ann map[string]string) (string, bool) {
	g, ok := ann[Group]
	if !ok {
		return namespace + "/" + name, true
	}
	if len(validation.IsDNS1123Label(g)) > 0 {
		return namespace + "/", false
	}
	return namespace + "/" + g, true
}

// ValidGroupKey reports whether a key from GroupKey names a real group.
func ValidGroupKey(key string) bool { return !strings.HasSuffix(key, "/") }

// Parse reads the microscaling.com/* annotations of a Deployment named name
// (the default group). It returns every problem at once as an aggregate of
// *FieldError; the Spec is only meaningful when the error is nil.
func Parse(name string, ann map[string]string) (Spec, error) {
	p := parser{ann: ann}
	s := Spec{
		Group:          name,
		Priority:       1,
		ScaleDownDelay: DefaultScaleDownDelay,
	}
	if n, size := Count(ann); n > MaxAnnotations || size > MaxAnnotationBytes {
		// Past the bounds nothing is read: parsing stays cheap whatever a
		// tenant writes, and the Deployment is left alone.
		p.fail(Prefix+"*", "", fmt.Sprintf("at most %d %s annotations of at most %d bytes in all; found %d of %d bytes",
			MaxAnnotations, Prefix, MaxAnnotationBytes, n, size))
		return s, utilerrors.NewAggregate(p.errs)
	}
	suggested := 0
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		v := ann[k]
		if strings.HasPrefix(k, Prefix) && !slices.Contains(Keys, k) {
			hint := ""
			if suggested < maxSuggestions {
				hint, suggested = suggest(k), suggested+1
			}
			p.fail(k, v, "unknown key"+hint)
		} else if slices.Contains(Keys, k) && len(v) > MaxValueLength {
			p.fail(k, v, fmt.Sprintf("at most %d bytes", MaxValueLength))
		}
	}
	if v, ok := p.get(Group); ok {
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			p.fail(Group, v, "a DNS-1123 label (lower case letters, digits and '-', at most 63): "+strings.Join(errs, "; "))
		} else {
			s.Group = v
		}
	}
	s.Priority = int32(p.integer(Priority, 1, 1, MaxPriority))
	if v, ok := p.get(Queue); ok {
		s.Queues = p.queues(v)
	}
	switch v, ok := p.get(Rule); {
	case !ok && len(s.Queues) > 0, ok && v == string(RuleQueue):
		s.Rule = RuleQueue
	case ok && v == string(RuleRemainder):
		s.Rule = RuleRemainder
	case ok:
		p.fail(Rule, v, `one of "queue", "remainder"`)
	}
	_, hasTarget := p.get(TargetQueueLength)
	_, hasWait := p.get(TargetWait)
	switch {
	case s.Rule == RuleQueue && !hasTarget && !hasWait:
		p.fail(TargetQueueLength, "", "required with rule queue unless target-wait is set: a whole number of messages, at least 1")
	case hasTarget:
		s.TargetQueueLength = p.integer(TargetQueueLength, 0, 1, MaxTarget)
	}
	if hasWait {
		s.TargetWait = p.duration(TargetWait, MinTargetWait, MaxTargetWait, "a Go duration from 100ms to 24h, for example 5s or 2m")
		for _, q := range s.Queues {
			if !q.CountsArrivals() {
				p.fail(TargetWait, ann[TargetWait], "needs queues that count arrivals; a "+q.Scheme+" queue here "+
					" does not (a Redis list, or a Prometheus queue without arrivals=): use target-queue-length")
				break
			}
		}
	}
	_, hasQueue := p.get(Queue)
	if s.Rule == RuleQueue && !hasQueue {
		p.fail(Queue, "", "required with rule queue: "+queueForms)
	}
	if s.Rule == RuleRemainder && hasQueue {
		p.fail(Queue, ann[Queue], "not used with rule remainder: remove it or use rule queue")
	}
	s.MinReplicas = int32(p.integer(MinReplicas, 0, 0, MaxReplicaCount))
	if _, ok := p.get(MaxReplicas); !ok {
		p.fail(MaxReplicas, "", fmt.Sprintf("required: a whole number from 1 to %d", MaxReplicaCount))
	} else {
		s.MaxReplicas = int32(p.integer(MaxReplicas, 0, 1, MaxReplicaCount))
		if s.MaxReplicas > 0 && s.MinReplicas > s.MaxReplicas {
			p.fail(MinReplicas, ann[MinReplicas], fmt.Sprintf("at most max-replicas (%d)", s.MaxReplicas))
		}
	}
	p.fallback(&s)
	s.MaxDelta = int32(p.integer(MaxDelta, 0, 1, MaxReplicaCount))
	s.ScaleUpLimit, s.ScaleDownLimit = p.rateLimit(ScaleUpLimit), p.rateLimit(ScaleDownLimit)
	for key, l := range map[string]*RateLimit{ScaleUpLimit: &s.ScaleUpLimit, ScaleDownLimit: &s.ScaleDownLimit} {
		if l.Set() && s.Rule == RuleRemainder {
			p.fail(key, ann[key], "used only with rule queue: a remainder follows the room at once")
			*l = RateLimit{}
		}
	}
	s.GroupMaxReplicas = int32(p.integer(GroupMaxReplicas, 0, 1, MaxReplicaCount))
	if _, ok := p.get(ScaleDownDelay); ok {
		s.ScaleDownDelay = p.duration(ScaleDownDelay, 0, MaxScaleDownDelay, "a Go duration from 0s to 24h, for example 30s or 2m")
	}
	s.Paused = p.boolean(Paused)
	s.SyncLabels = p.boolean(SyncLabels)
	if v, ok := p.get(QueueSecret); ok {
		switch {
		case len(validation.IsDNS1123Subdomain(v)) > 0:
			p.fail(QueueSecret, v, "the name of a Secret in the Deployment's namespace (a DNS-1123 subdomain)")
		case !hasQueue:
			p.fail(QueueSecret, v, "used only with microscaling.com/queue")
		case slices.ContainsFunc(s.Queues, func(q QueueRef) bool { return q.Scheme == SchemeNSQ || q.Scheme == SchemeNSQLookupd }):
			p.fail(QueueSecret, v, "nsqd and nsqlookupd take no credentials: name queues of one kind that does, or remove it")
		default:
			s.QueueSecret = v
		}
	}
	return s, utilerrors.NewAggregate(p.errs)
}

// fallback reads fallback-replicas and fallback-after: a queue member's
// replicas once its queues have been unreadable that long, within its
// min-replicas and max-replicas.
func (p *parser) fallback(s *Spec) {
	v, hasReplicas := p.get(FallbackReplicas)
	after, hasAfter := p.get(FallbackAfter)
	switch {
	case hasReplicas && s.Rule == RuleRemainder:
		p.fail(FallbackReplicas, v, "used only with rule queue: a remainder reads no queue")
		return
	case hasAfter && !hasReplicas:
		p.fail(FallbackAfter, after, "used only with fallback-replicas")
		return
	case !hasReplicas:
		return
	}
	n := p.integer(FallbackReplicas, -1, 0, MaxReplicaCount)
	if n < 0 {
		return
	}
	if s.MaxReplicas > 0 && (int32(n) < s.MinReplicas || int32(n) > s.MaxReplicas) {
		p.fail(FallbackReplicas, v, fmt.Sprintf("from min-replicas (%d) to max-replicas (%d)", s.MinReplicas, s.MaxReplicas))
		return
	}
	d := DefaultFallbackAfter
	if hasAfter {
		if d = p.duration(FallbackAfter, MinFallbackAfter, MaxScaleDownDelay, "a Go duration from 1s to 24h, for example 30s or 2m"); d == 0 {
			return
		}
	}
	s.FallbackReplicas, s.FallbackAfter = int32(n), d
}

// rateLimit reads N/PERIOD or N%/PERIOD: at most N replicas (or N percent
// of them) of change within any window of PERIOD.
func (p *parser) rateLimit(key string) RateLimit {
	v, ok := p.get(key)
	if !ok {
		return RateLimit{}
	}
	want := fmt.Sprintf("N/PERIOD or N%%/PERIOD: at most N replicas (1 to %d) or N percent (1 to %d) of change in any window of PERIOD, a Go duration from 1s to 1h; for example 4/60s or 100%%/15s",
		MaxReplicaCount, MaxLimitPct)
	n, period, ok := strings.Cut(v, "/")
	l := RateLimit{}
	n, l.Percent = strings.CutSuffix(n, "%")
	count, err := strconv.ParseInt(n, 10, 32)
	d, derr := time.ParseDuration(period)
	hi := int64(MaxReplicaCount)
	if l.Percent {
		hi = MaxLimitPct
	}
	if !ok || err != nil || derr != nil || count < 1 || count > hi || d < MinLimitPeriod || d > MaxLimitPeriod {
		p.fail(key, v, want)
		return RateLimit{}
	}
	l.N, l.Period = int32(count), d
	return l
}

type parser struct {
	ann  map[string]string
	errs []error
}

func (p *parser) fail(key, value, want string) {
	p.errs = append(p.errs, &FieldError{Key: key, Value: value, Want: want})
}

// get returns the value of key, unless it is absent or already reported as too long.
func (p *parser) get(key string) (string, bool) {
	v, ok := p.ann[key]
	if !ok || len(v) > MaxValueLength {
		return "", false
	}
	return v, true
}

func (p *parser) integer(key string, def, lo, hi int64) int64 {
	v, ok := p.get(key)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		p.fail(key, v, fmt.Sprintf("a whole number from %d to %d", lo, hi))
		return def
	}
	return n
}

// duration reads a Go duration within [lo, hi]; want says what is valid.
func (p *parser) duration(key string, lo, hi time.Duration, want string) time.Duration {
	v, _ := p.get(key)
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || d > hi {
		p.fail(key, v, want)
		return 0
	}
	return d
}

func (p *parser) boolean(key string) bool {
	v, ok := p.get(key)
	if !ok {
		return false
	}
	switch v {
	case "true":
		return true
	case "false":
		return false
	}
	p.fail(key, v, `"true" or "false"`)
	return false
}

// MaxAnnotations and MaxAnnotationBytes bound the microscaling.com/*
// annotations of one Deployment (keys and values, in bytes). Past either,
// Parse reads none of them and reports one problem. Every known key at its
// longest valid value fits (18 keys of at most MaxValueLength bytes), so a
// Deployment the bounds refuse holds unknown keys, which the admission
// policy refuses too.
const (
	MaxAnnotations     = 32
	MaxAnnotationBytes = 40 << 10
)

// maxSuggestions bounds the unknown keys a "did you mean" is computed for
// per Parse.
const maxSuggestions = 8

// Count is how many microscaling.com/* annotations ann holds, and their
// keys' and values' bytes.
func Count(ann map[string]string) (n, size int) {
	for k, v := range ann {
		if strings.HasPrefix(k, Prefix) {
			n++
			size += len(k) + len(v)
		}
	}
	return n, size
}

// suggest names the known key closest to an unknown one, if any is close.
func suggest(key string) string {
	best, bestDist := "", 4
	for _, k := range Keys {
		if l := len(key) - len(k); l >= bestDist || -l >= bestDist {
			continue // the distance is at least the difference in length
		}
		if d := distance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return fmt.Sprintf(" (known keys: %s)", strings.Join(Keys, ", "))
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// distance is the Levenshtein edit distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// QualifySecret marks each queue of spec with the Secret its credentials
// come from, in namespace ns ("ns/name"): the same queue read with
// different credentials is a different read, so that no Deployment's
// reading is ever made with another namespace's Secret.
func (s *Spec) QualifySecret(ns string) {
	if s.QueueSecret == "" {
		return
	}
	for i := range s.Queues {
		s.Queues[i].Secret = ns + "/" + s.QueueSecret
	}
}

// QueuesInNamespace checks that every in-cluster queue address of spec
// names a Service of namespace ns: NAME.NS, NAME.NS.svc or
// NAME.NS.svc.DOMAIN. A bare NAME is refused too (it would resolve in the
// controller's own namespace). IP addresses and other DNS names are left to
// the endpoint policy. The problems come as Parse gives them.
func QueuesInNamespace(spec Spec, ns string) error {
	var errs []error
	for _, q := range spec.Queues {
		host, _, err := net.SplitHostPort(q.Host)
		if err != nil {
			host = q.Host
		}
		if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			continue
		}
		labels := strings.Split(strings.TrimSuffix(host, "."), ".")
		switch {
		case len(labels) == 1:
			errs = append(errs, &FieldError{Key: Queue, Value: q.String(), Want: "an in-cluster Service as NAME." + ns + " (a bare name resolves in the controller's namespace)"})
		case (len(labels) == 2 || labels[2] == "svc") && labels[1] != ns:
			errs = append(errs, &FieldError{Key: Queue, Value: q.String(), Want: "a Service of this Deployment's namespace, NAME." + ns + "[.svc...]: queues in other namespaces are not read"})
		}
	}
	return utilerrors.NewAggregate(errs)
}

// FieldErrors returns the problems in an error returned by Parse.
func FieldErrors(err error) []*FieldError {
	var agg utilerrors.Aggregate
	if !errors.As(err, &agg) {
		return nil
	}
	var out []*FieldError
	for _, e := range agg.Errors() {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
		}
	}
	return out
}

// Replicas is a Deployment's spec.replicas as Kubernetes reads it: unset
// means 1.
func Replicas(spec *int32) int32 {
	if spec == nil {
		return 1
	}
	return *spec
}

// SameManaged reports whether a and b hold the same microscaling.com/*
// annotations (any others may differ).
func SameManaged(a, b map[string]string) bool {
	n := 0
	for k, v := range a {
		if strings.HasPrefix(k, Prefix) {
			if w, ok := b[k]; !ok || w != v {
				return false
			}
			n++
		}
	}
	for k := range b {
		if strings.HasPrefix(k, Prefix) {
			n--
		}
	}
	return n == 0
}
