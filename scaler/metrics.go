package scaler

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the controller's Prometheus metrics, all named microscaling_*.
type Metrics struct {
	Backlog          *prometheus.GaugeVec
	Target           *prometheus.GaugeVec
	Desired          *prometheus.GaugeVec
	Current          *prometheus.GaugeVec
	ScaleOps         *prometheus.CounterVec
	QueueReadErrors  *prometheus.CounterVec
	QueueReadLatency *prometheus.HistogramVec
	AnnotationErrors *prometheus.CounterVec
	TickDuration     prometheus.Histogram
	TickLag          prometheus.Gauge
	Leader           prometheus.Gauge
}

// NewMetrics makes the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	member := []string{"namespace", "deployment"}
	m := &Metrics{
		Backlog:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "microscaling_queue_backlog", Help: "Messages waiting, in flight or deferred on the Deployment's queues."}, member),
		Target:           prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "microscaling_queue_target", Help: "The target-queue-length of the Deployment."}, member),
		Desired:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "microscaling_desired_replicas", Help: "Replicas the last decision asked for."}, member),
		Current:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "microscaling_current_replicas", Help: "spec.replicas of the Deployment when the decision was made."}, member),
		ScaleOps:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_scale_operations_total", Help: "Writes to /scale, by direction (up, down) and result."}, append(member, "direction", "result")),
		QueueReadErrors:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_queue_read_errors_total", Help: "Failed reads of an nsqd or nsqlookupd."}, []string{"host"}),
		QueueReadLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "microscaling_queue_read_seconds", Help: "Latency of reading an nsqd or nsqlookupd.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"host"}),
		AnnotationErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "microscaling_annotation_errors_total", Help: "Invalid microscaling.com/* annotations seen, by key."}, append(member, "key")),
		TickDuration:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "microscaling_tick_duration_seconds", Help: "From the start of a tick to the last group decided.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		TickLag:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "microscaling_tick_lag_seconds", Help: "How late the last tick started against its schedule."}),
		Leader:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "microscaling_leader", Help: "1 while this process holds the lease (or runs without election)."}),
	}
	reg.MustRegister(m.Backlog, m.Target, m.Desired, m.Current, m.ScaleOps, m.QueueReadErrors, m.QueueReadLatency,
		m.AnnotationErrors, m.TickDuration, m.TickLag, m.Leader)
	return m
}

func (m *Metrics) forget(ns, name string) {
	for _, g := range []*prometheus.GaugeVec{m.Backlog, m.Target, m.Desired, m.Current} {
		g.DeleteLabelValues(ns, name)
	}
	m.ScaleOps.DeletePartialMatch(prometheus.Labels{"namespace": ns, "deployment": name})
	m.AnnotationErrors.DeletePartialMatch(prometheus.Labels{"namespace": ns, "deployment": name})
}
