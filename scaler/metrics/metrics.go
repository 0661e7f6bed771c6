// Package metrics owns the controller's Prometheus metrics (all named
// microscaling_*): the counters and histograms the loop and the queue reader
// update, and a collector that reads every member's gauges from the loop's
// state at scrape time, so 10,000 members cost no stored series.
package metrics

import (
	"errors"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus metrics, all named microscaling_*.
type Metrics struct {
	ScaleOps         *prometheus.CounterVec
	QueueReadErrors  *prometheus.CounterVec
	QueueReadLatency *prometheus.HistogramVec
	AnnotationErrors *prometheus.CounterVec
	TickDuration     prometheus.Histogram
	TickLag          prometheus.Histogram
	APIRequests      *prometheus.CounterVec
	Leader           prometheus.Gauge
}

// NewMetrics makes the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ScaleOps:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_scale_operations_total", Help: "Writes to /scale, by direction (up, down) and result."}, append(memberLabels, "direction", "result")),
		QueueReadErrors:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_queue_read_errors_total", Help: "Failed reads of an nsqd or nsqlookupd."}, []string{"host"}),
		QueueReadLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "microscaling_queue_read_duration_seconds", Help: "Latency of reading an nsqd or nsqlookupd.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"host"}),
		AnnotationErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_annotation_errors_total", Help: "Invalid microscaling.com/* annotations seen, by key."}, append(memberLabels, "key")),
		TickDuration:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "microscaling_tick_duration_seconds", Help: "From the start of a tick to the last group decided.", Buckets: prometheus.ExponentialBuckets(0.001, 1.25, 40)}),
		TickLag:          prometheus.NewHistogram(prometheus.HistogramOpts{Name: "microscaling_tick_lag_seconds", Help: "From a tick's scheduled start to its last group decided.", Buckets: prometheus.ExponentialBuckets(0.001, 1.25, 40)}),
		APIRequests:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_api_requests_total", Help: "Requests to the Kubernetes API, by verb and resource."}, []string{"verb", "resource"}),
		Leader:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "microscaling_leader", Help: "1 while this process holds the lease (or runs without election)."}),
	}
	reg.MustRegister(m.ScaleOps, m.QueueReadErrors, m.QueueReadLatency,
		m.AnnotationErrors, m.TickDuration, m.TickLag, m.Leader, m.APIRequests)
	return m
}

// RegisterBuildInfo registers microscaling_build_info, always 1, whose
// labels say which build runs.
func RegisterBuildInfo(reg prometheus.Registerer, version, revision, goVersion, platform string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "microscaling_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion, "platform": platform}})
	g.Set(1)
	reg.MustRegister(g)
}

// CountRequests wraps a client transport so that every API request is counted.
func (m *Metrics) CountRequests(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		m.APIRequests.WithLabelValues(r.Method, apiResource(r.URL.Path)).Inc()
		return rt.RoundTrip(r)
	})
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// apiResource names the resource of an API path, without names or
// namespaces, to keep the label's values few: /apis/apps/v1/namespaces/x/deployments/y/scale -> deployments/scale.
func apiResource(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) > 0 && parts[0] == "api":
		parts = parts[min(2, len(parts)):]
	case len(parts) > 0 && parts[0] == "apis":
		parts = parts[min(3, len(parts)):]
	default:
		return "other"
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		if len(parts) == 2 {
			return "namespaces"
		}
		parts = parts[2:]
	}
	switch len(parts) {
	case 0:
		return "discovery"
	case 1, 2:
		return parts[0]
	default:
		return parts[0] + "/" + parts[2]
	}
}

// Forget drops the series of a Deployment that is no longer managed.
func (m *Metrics) Forget(ns, name string) {
	m.ScaleOps.DeletePartialMatch(prometheus.Labels{"namespace": ns, "deployment": name})
	m.AnnotationErrors.DeletePartialMatch(prometheus.Labels{"namespace": ns, "deployment": name})
}

// The per-Deployment gauges, collected from the controller's state.
var (
	memberLabels   = []string{"namespace", "deployment"}
	backlogDesc    = prometheus.NewDesc("microscaling_queue_backlog", "Messages waiting, in flight or deferred on the Deployment's queues.", memberLabels, nil)
	targetDesc     = prometheus.NewDesc("microscaling_queue_target", "The target-queue-length of the Deployment.", memberLabels, nil)
	desiredDesc    = prometheus.NewDesc("microscaling_desired_replicas", "Replicas the last decision asked for.", memberLabels, nil)
	currentDesc    = prometheus.NewDesc("microscaling_current_replicas", "spec.replicas of the Deployment when the decision was made.", memberLabels, nil)
	infoDesc       = prometheus.NewDesc("microscaling_member_info", "Always 1 for a decided member; its labels say its group, rule and priority (join on namespace, deployment).", append(memberLabels, "group", "rule", "priority"), nil)
	pausedDesc     = prometheus.NewDesc("microscaling_member_paused", "1 while the Deployment is annotated paused: left as it is.", memberLabels, nil)
	unreadableDesc = prometheus.NewDesc("microscaling_queue_unreadable", "1 while the Deployment's queue cannot be read: the member is held (or at its fallback-replicas); else 0.", memberLabels, nil)
	invalidDesc    = prometheus.NewDesc("microscaling_annotations_invalid", "1 while the Deployment's microscaling.com/* annotations do not parse (the last good ones, if any, stay in force); else 0.", memberLabels, nil)
	conflictDesc   = prometheus.NewDesc("microscaling_conflicting_autoscaler", "1 while another autoscaler (an HPA, KEDA's too) targets the Deployment, which microscaling then leaves alone; else 0.", memberLabels, nil)
	fallbackDesc   = prometheus.NewDesc("microscaling_fallback_active", "1 while the Deployment is at its fallback-replicas, its queues unreadable for fallback-after; else 0.", memberLabels, nil)
	minDesc        = prometheus.NewDesc("microscaling_min_replicas", "The min-replicas of the Deployment.", memberLabels, nil)
	maxDesc        = prometheus.NewDesc("microscaling_max_replicas", "The max-replicas of the Deployment.", memberLabels, nil)
	heldDesc       = prometheus.NewDesc("microscaling_member_held", "Always 1 for a decided member; reason says what keeps it from what its load asks for (max, min, max-delta, rate-limit, delay, unreadable, fallback, paused, budget, room, priority, saturated, conflict), none when nothing does.", append(memberLabels, "reason"), nil)
	arrivalDesc    = prometheus.NewDesc("microscaling_arrival_rate", "Messages arriving on the Deployment's queues per second, as measured.", memberLabels, nil)
	serviceDesc    = prometheus.NewDesc("microscaling_service_rate", "Messages one replica of the Deployment completes per second, as measured.", memberLabels, nil)
)

// heldReasons are the values microscaling_member_held's reason may take:
// a bounded set, whatever a member's state.
var heldReasons = []string{"none", "max", "min", "max-delta", "rate-limit", "delay", "unreadable", "fallback", "paused", "budget", "room", "priority", "saturated", "conflict"}

// Gauges are one member's gauge values as its last decision left them; the
// Has* and Decided flags tell which are set.
type Gauges struct {
	Backlog, Target       int64
	Desired, Current      int32
	Min, Max              int32
	HasBacklog, HasTarget bool
	Decided               bool
	// Conflicting: another autoscaler targets the Deployment, which is left alone.
	Conflicting bool
	// Paused, Unreadable (its queue read failed), Invalid (its
	// annotations do not parse) and Fallback (at fallback-replicas) are
	// the member's state.
	Paused, Unreadable, Invalid, Fallback bool
	// Held is what keeps the member from what its load asks for (a
	// policy Held word); empty when nothing does.
	Held string
	// Arrival and Service are the measured rates, when HasArrival and
	// HasService.
	Arrival, Service       float64
	HasArrival, HasService bool
	// Group, Rule and Priority label microscaling_member_info once decided.
	Group, Rule string
	Priority    int32
}

// Source gives every member's gauges at scrape time.
type Source interface {
	EachMember(f func(namespace, name string, g Gauges))
}

// Detail is how many series each member has.
type Detail int

const (
	// Full: every gauge of every decided member, the state gauges at 0 or
	// 1 (up to 15 series a member).
	Full Detail = iota
	// Compact: what a fleet of tens of thousands can afford (each series
	// costs the controller memory at every scrape, and Prometheus its
	// storage): desired and current replicas, the backlog, and a state
	// gauge or microscaling_member_held only while it is set (at most 8, 3
	// while nothing holds a member).
	Compact
)

// ParseDetail reads a --member-metrics value: full or compact.
func ParseDetail(s string) (Detail, error) {
	switch s {
	case "full":
		return Full, nil
	case "compact":
		return Compact, nil
	}
	return Full, errors.New("must be full or compact")
}

// Collector is a prometheus.Collector of the per-Deployment gauges, read
// from src at each scrape, as many a member as detail says.
func Collector(src Source, detail Detail) prometheus.Collector { return collector{src, detail} }

type collector struct {
	src    Source
	detail Detail
}

// Describe is part of prometheus.Collector.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{backlogDesc, targetDesc, desiredDesc, currentDesc, conflictDesc, infoDesc, pausedDesc, unreadableDesc,
		invalidDesc, fallbackDesc, minDesc, maxDesc, heldDesc, arrivalDesc, serviceDesc} {
		ch <- d
	}
}

// Collect is part of prometheus.Collector. In full detail the state gauges
// are there for every member, 0 or 1, so that alerts and graphs see both.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	full := c.detail == Full
	c.src.EachMember(func(ns, name string, g Gauges) {
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, ns, name)
		}
		if g.HasBacklog {
			gauge(backlogDesc, float64(g.Backlog))
		}
		if g.HasTarget && full {
			gauge(targetDesc, float64(g.Target))
		}
		state := map[*prometheus.Desc]bool{conflictDesc: g.Conflicting, pausedDesc: g.Paused, unreadableDesc: g.Unreadable, invalidDesc: g.Invalid, fallbackDesc: g.Fallback}
		if !g.Decided && !slices.Contains(slices.Collect(maps.Values(state)), true) {
			return // released, or not decided yet: no series
		}
		for d, on := range state {
			if on || full {
				gauge(d, bit(on))
			}
		}
		if !g.Decided {
			return
		}
		gauge(desiredDesc, float64(g.Desired))
		gauge(currentDesc, float64(g.Current))
		reason := "none"
		if slices.Contains(heldReasons, g.Held) {
			reason = g.Held
		}
		if full || reason != "none" {
			ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, 1, ns, name, reason)
		}
		if !full {
			return
		}
		gauge(minDesc, float64(g.Min))
		gauge(maxDesc, float64(g.Max))
		if g.HasArrival {
			gauge(arrivalDesc, g.Arrival)
		}
		if g.HasService {
			gauge(serviceDesc, g.Service)
		}
		ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, ns, name, g.Group, g.Rule, strconv.Itoa(int(g.Priority)))
	})
}

func bit(on bool) float64 {
	if on {
		return 1
	}
	return 0
}
