package kubeexport

import "github.com/prometheus/client_golang/prometheus"

// metrics are the exporter's; docs/metrics.md lists them.
type metrics struct {
	services  prometheus.Gauge
	conflicts prometheus.Gauge
	writes    *prometheus.CounterVec
	errors    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "control", Name: "kubernetes_exported_services",
			Help: "Consul services kept as Services in the Kubernetes export namespace.",
		}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "control", Name: "kubernetes_export_conflicts",
			Help: "Consul services not exported because a Service of that name, not created by mesh, exists in the export namespace.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "control", Name: "kubernetes_export_writes_total",
			Help: "Writes to the Kubernetes export namespace, by operation (create, update, delete).",
		}, []string{"op"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "control", Name: "kubernetes_export_errors_total",
			Help: "Export rounds that failed in part (retried with backoff).",
		}),
	}
	for _, op := range []string{"create", "update", "delete"} {
		m.writes.WithLabelValues(op)
	}
	reg.MustRegister(m.services, m.conflicts, m.writes, m.errors)
	return m
}
