package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Observability configures what the agent records for every request it
// carries: access log lines and trace spans. Metrics are always on and
// served on the admin listener's /metrics.
type Observability struct {
	AccessLog AccessLog `mapstructure:"access_log" yaml:"access_log"`
	Tracing   Tracing   `mapstructure:"tracing" yaml:"tracing"`
}

// AccessLog configures the one line written per request.
type AccessLog struct {
	// Enabled turns access logging on (default true).
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// Output is "stdout" (journald under systemd), "stderr", or the path of
	// a file, reopened on SIGUSR1 so that logrotate can move it away.
	Output string `mapstructure:"output" yaml:"output"`
	// Format is json (one object per line) or text (for a terminal).
	Format string `mapstructure:"format" yaml:"format"`
	// Fields lists the fields written; empty means all of them. See
	// docs/metrics.md for the list.
	Fields []string `mapstructure:"fields" yaml:"fields"`
	// SampleRatio is the fraction of requests logged, 0 to 1 (default 1).
	SampleRatio float64 `mapstructure:"sample_ratio" yaml:"sample_ratio"`
	// FlushInterval bounds how long a line may wait in the write buffer
	// (default 1s); 0 writes every line at once (one system call each).
	FlushInterval time.Duration `mapstructure:"flush_interval" yaml:"flush_interval"`
}

// Tracing configures OpenTelemetry spans: a server span per inbound
// request, a client span per outbound request.
type Tracing struct {
	// Exporter is none (default), otlp-grpc or otlp-http.
	Exporter string `mapstructure:"exporter" yaml:"exporter"`
	// Endpoint is where spans are sent: host:port (plaintext; default
	// 127.0.0.1:4317 for otlp-grpc, 127.0.0.1:4318 for otlp-http) or a
	// URL (http:// or https://; for otlp-http the path defaults to
	// /v1/traces).
	Endpoint string `mapstructure:"endpoint" yaml:"endpoint"`
	// SampleRatio is the fraction of new traces sampled, 0 to 1 (default
	// 0.01). A request whose caller sampled it (or not) follows the
	// caller's decision (parent-based sampling).
	SampleRatio float64 `mapstructure:"sample_ratio" yaml:"sample_ratio"`
	// Propagators are the trace-context formats written on forwarded
	// requests: w3c (traceparent/tracestate), b3 (single b3 header),
	// b3multi (X-B3-* headers). W3C and both B3 forms are always read.
	Propagators []string `mapstructure:"propagators" yaml:"propagators"`
	// QueueSize bounds the spans waiting for export (default 2048);
	// beyond it spans are dropped and counted, never waited for.
	QueueSize int `mapstructure:"queue_size" yaml:"queue_size"`
	// BatchSize is the most spans sent in one export (default 512).
	BatchSize int `mapstructure:"batch_size" yaml:"batch_size"`
	// BatchTimeout is the longest a span waits for its batch (default 1s).
	BatchTimeout time.Duration `mapstructure:"batch_timeout" yaml:"batch_timeout"`
	// ExportTimeout bounds one export, retries included (default 10s).
	ExportTimeout time.Duration `mapstructure:"export_timeout" yaml:"export_timeout"`
}

// AccessLogFields are the access log fields, in the order they are written.
var AccessLogFields = []string{
	"trace_id", "span_id", "request_id", "direction", "local_service", "method", "authority",
	"path", "protocol", "status", "grpc_status", "reason", "bytes_in", "bytes_out",
	"duration_ms", "upstream_service", "endpoint", "retries", "caller", "user_agent",
	"peer_identity", "authz_rule",
}

// TracePropagators are the values tracing.propagators accepts.
var TracePropagators = []string{"w3c", "b3", "b3multi"}

// DefaultObservability is the observability section's default.
func DefaultObservability() Observability {
	return Observability{
		AccessLog: AccessLog{
			Enabled:       true,
			Output:        "stdout",
			Format:        "json",
			Fields:        []string{},
			SampleRatio:   1,
			FlushInterval: time.Second,
		},
		Tracing: Tracing{
			Exporter:      "none",
			SampleRatio:   0.01,
			Propagators:   []string{"w3c"},
			QueueSize:     2048,
			BatchSize:     512,
			BatchTimeout:  time.Second,
			ExportTimeout: 10 * time.Second,
		},
	}
}

func (o *Observability) validate(v *validator) {
	a := o.AccessLog
	v.check("observability.access_log.output", strings.TrimSpace(a.Output) != "",
		"must be stdout, stderr or a file path")
	v.oneOf("observability.access_log.format", a.Format, "json", "text")
	for i, f := range a.Fields {
		v.check(fmt.Sprintf("observability.access_log.fields[%d]", i), slices.Contains(AccessLogFields, f),
			"%q is not one of %s", f, strings.Join(AccessLogFields, ", "))
	}
	v.check("observability.access_log.sample_ratio", a.SampleRatio >= 0 && a.SampleRatio <= 1,
		"must be between 0 and 1, got %g", a.SampleRatio)
	v.nonNegative("observability.access_log.flush_interval", a.FlushInterval)

	t := o.Tracing
	v.oneOf("observability.tracing.exporter", t.Exporter, "none", "otlp-grpc", "otlp-http")
	if t.Endpoint != "" {
		if strings.Contains(t.Endpoint, "://") {
			u, err := url.Parse(t.Endpoint)
			v.check("observability.tracing.endpoint", err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "",
				"must be HOST:PORT or an http:// or https:// URL, got %q; write e.g. 127.0.0.1:4317", t.Endpoint)
		} else {
			v.hostPort("observability.tracing.endpoint", t.Endpoint)
		}
	}
	v.check("observability.tracing.sample_ratio", t.SampleRatio >= 0 && t.SampleRatio <= 1,
		"must be between 0 and 1, got %g", t.SampleRatio)
	for i, p := range t.Propagators {
		v.oneOf(fmt.Sprintf("observability.tracing.propagators[%d]", i), p, TracePropagators...)
	}
	v.check("observability.tracing.queue_size", t.QueueSize > 0, "must be more than 0, got %d; write e.g. 2048", t.QueueSize)
	v.check("observability.tracing.batch_size", t.BatchSize > 0 && t.BatchSize <= t.QueueSize,
		"must be between 1 and queue_size (%d), got %d", t.QueueSize, t.BatchSize)
	v.positive("observability.tracing.batch_timeout", t.BatchTimeout)
	v.positive("observability.tracing.export_timeout", t.ExportTimeout)
}
