package loadstats

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	streams prometheus.Gauge
	reports prometheus.Counter
	dropped prometheus.Counter
	edges   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "mesh", Subsystem: "control", Name: "load_report_streams",
			Help: "Open load reporting (LRS) streams."}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "control", Name: "load_reports_total",
			Help: "Load reports received (one per proxy per interval)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "control", Name: "load_report_edges_dropped_total",
			Help: "Cluster reports not kept because the edge limit was reached."}),
		edges: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "mesh", Subsystem: "control", Name: "load_report_edges",
			Help: "Caller-to-callee edges with load reports kept."}),
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.reports, m.dropped, m.edges)
	}
	return m
}
