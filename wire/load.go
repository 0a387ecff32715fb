package wire

import "strconv"

// Load reports (Envoy's Load Reporting Service, envoy.service.load_stats.v3):
// an agent reports, per upstream cluster (named after the service) and
// locality, the requests it issued, that succeeded, that failed and that
// are in flight, plus latency as load metrics. The metric names below are
// what the agent writes and the control plane reads.
const (
	// LoadLatencyMetric is the latency of finished requests in
	// milliseconds: num_requests_finished_with_metric requests took
	// total_metric_value ms in all.
	LoadLatencyMetric = "mesh.latency_ms"
	// LoadLatencyBucketPrefix starts the names of the latency histogram's
	// buckets, LoadLatencyBucketPrefix + the bucket's upper bound in ms
	// ("mesh.latency_ms.le.25", "mesh.latency_ms.le.inf"): each counts the
	// requests that finished within that bound and above the previous
	// one (not cumulative), with the sum of their latencies. The control
	// plane estimates percentiles from them.
	LoadLatencyBucketPrefix = "mesh.latency_ms.le."
)

// LoadLatencyBucketsMs are the upper bounds of the latency histogram's
// buckets in ms; a last bucket, "inf", takes the rest.
var LoadLatencyBucketsMs = []float64{1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}

// LoadLatencyBucketName is the load metric name of bucket i of
// LoadLatencyBucketsMs; i == len(LoadLatencyBucketsMs) is the "inf" bucket.
func LoadLatencyBucketName(i int) string {
	if i >= len(LoadLatencyBucketsMs) {
		return LoadLatencyBucketPrefix + "inf"
	}
	return LoadLatencyBucketPrefix + strconv.FormatFloat(LoadLatencyBucketsMs[i], 'f', -1, 64)
}
