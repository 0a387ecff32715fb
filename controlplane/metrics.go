package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshvm/mesh/controlplane/source"
)

// metrics are the control plane's own Prometheus metrics; the xDS server
// adds its own (mesh_xds_*). docs/metrics.md lists them all.
type metrics struct {
	services   prometheus.Gauge
	endpoints  *prometheus.GaugeVec
	buildTime  prometheus.Histogram
	buildFails prometheus.Counter
	reloads    *prometheus.CounterVec
	conflicts  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, sources []source.Source) *metrics {
	m := &metrics{
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "control", Name: "services",
			Help: "Services in the current model.",
		}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "control", Name: "endpoints",
			Help: "Endpoints in the current model, by health (healthy, unhealthy, draining).",
		}, []string{"health"}),
		buildTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "mesh", Subsystem: "control", Name: "snapshot_build_seconds",
			Help:    "Time from merged sources to snapshots set for every node.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		buildFails: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "control", Name: "snapshot_build_failures_total",
			Help: "Model changes whose translation or validation failed (the previous snapshots kept serving).",
		}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "control", Name: "endpoint_conflicts",
			Help: "Endpoints left out of the model because another endpoint of the same service has the same address:port (e.g. one in Consul and Kubernetes).",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mesh", Name: "config_reloads_total",
			Help: "Config reloads (SIGHUP) by result: ok, or error (the running config stays).",
		}, []string{"result"}),
	}
	// Both results exist from the start, so increase() sees the first error.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	reg.MustRegister(m.services, m.endpoints, m.buildTime, m.buildFails, m.reloads, m.conflicts, sourceCollector(sources))
	return m
}

var (
	sourceErrorsDesc = prometheus.NewDesc("mesh_control_source_errors_total",
		"Failed reads of a source (the source's last good view stays in force).", []string{"source"}, nil)
	sourceSuccessDesc = prometheus.NewDesc("mesh_control_source_last_success_timestamp_seconds",
		"Unix time of a source's last successful read (0: never).", []string{"source"}, nil)
)

// sourceCollector reads each source's Status when scraped, leaving out
// sources that are switched off (the CMDB without a URL).
type sourceCollector []source.Source

// switchable is a source that configuration can switch off.
type switchable interface{ enabled() bool }

// active reports whether s is configured.
func active(s source.Source) bool {
	sw, ok := s.(switchable)
	return !ok || sw.enabled()
}

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sourceErrorsDesc
	ch <- sourceSuccessDesc
}

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c {
		if !active(s) {
			continue
		}
		st := s.Status()
		ch <- prometheus.MustNewConstMetric(sourceErrorsDesc, prometheus.CounterValue, float64(st.Errors), s.Name())
		var ts float64
		if !st.LastSuccess.IsZero() {
			ts = float64(st.LastSuccess.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(sourceSuccessDesc, prometheus.GaugeValue, ts, s.Name())
	}
}
