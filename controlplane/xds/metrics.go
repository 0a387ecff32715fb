package xds

import "github.com/prometheus/client_golang/prometheus"

// metrics are the xDS server's Prometheus metrics (docs/metrics.md).
type metrics struct {
	connected prometheus.Gauge
	streams   prometheus.Gauge
	pushes    *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	setTime   prometheus.Histogram
	refused   prometheus.Counter
	// resources counts the resources sent (a failover without a resync
	// sends none); startRefused the streams refused before the first view.
	resources    *prometheus.CounterVec
	startRefused prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "connected_nodes",
			Help: "xDS nodes (distinct node ids) with at least one open stream.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "streams",
			Help: "Open xDS streams.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "pushes_total",
			Help: "xDS responses sent, by resource type (cluster, endpoint, listener, route).",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "nacks_total",
			Help: "xDS responses a client rejected, by resource type.",
		}, []string{"type"}),
		setTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "snapshot_set_seconds",
			Help:    "Time to build and set the snapshots of every connected node after a model change.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "refused_nodes_total",
			Help: "xDS streams ended because their node was not allowed for the identity that presented it.",
		}),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "resources_sent_total",
			Help: "Resources sent in xDS responses, by resource type.",
		}, []string{"type"}),
		startRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mesh", Subsystem: "xds", Name: "refused_not_ready_total",
			Help: "xDS streams refused (UNAVAILABLE) because the first complete view was not built yet.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.streams, m.pushes, m.nacks, m.setTime, m.refused, m.resources, m.startRefused)
	}
	return m
}
