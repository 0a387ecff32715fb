package observability_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshvm/mesh/config"
)

// TestObservabilityConfig checks the observability section as users write
// it: a YAML file through config.Load, defaults, and each invalid value
// named by its field path.
func TestObservabilityConfig(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		wantPath string // "" when valid
		check    func(t *testing.T, c config.Observability)
	}{
		{
			name: "defaults",
			yaml: "log:\n  level: info\n",
			check: func(t *testing.T, c config.Observability) {
				if !c.AccessLog.Enabled || c.AccessLog.Output != "stdout" || c.Tracing.Exporter != "none" ||
					c.Tracing.SampleRatio != 0.01 || len(c.Tracing.Propagators) != 1 {
					t.Errorf("defaults = %+v", c)
				}
			},
		},
		{
			name: "full section",
			yaml: "observability:\n  access_log:\n    output: /var/log/mesh/access.log\n    format: text\n    fields: [status, path]\n    sample_ratio: 0.5\n" +
				"  tracing:\n    exporter: otlp-http\n    endpoint: https://collector.example:4318/v1/traces\n    sample_ratio: 1\n    propagators: [b3]\n    queue_size: 100\n    batch_size: 10\n",
			check: func(t *testing.T, c config.Observability) {
				if c.AccessLog.Output != "/var/log/mesh/access.log" || c.AccessLog.SampleRatio != 0.5 || len(c.AccessLog.Fields) != 2 ||
					c.Tracing.Exporter != "otlp-http" || c.Tracing.Propagators[0] != "b3" || c.Tracing.QueueSize != 100 {
					t.Errorf("decoded = %+v", c)
				}
			},
		},
		{name: "unknown format", yaml: "observability:\n  access_log:\n    format: xml\n", wantPath: "observability.access_log.format"},
		{name: "unknown field name", yaml: "observability:\n  access_log:\n    fields: [status, cookie]\n", wantPath: "observability.access_log.fields[1]"},
		{name: "sample ratio above 1", yaml: "observability:\n  access_log:\n    sample_ratio: 2\n", wantPath: "observability.access_log.sample_ratio"},
		{name: "unknown exporter", yaml: "observability:\n  tracing:\n    exporter: zipkin\n", wantPath: "observability.tracing.exporter"},
		{name: "bad endpoint", yaml: "observability:\n  tracing:\n    endpoint: ftp://x\n", wantPath: "observability.tracing.endpoint"},
		{name: "unknown propagator", yaml: "observability:\n  tracing:\n    propagators: [jaeger]\n", wantPath: "observability.tracing.propagators[0]"},
		{name: "batch above queue", yaml: "observability:\n  tracing:\n    queue_size: 10\n    batch_size: 20\n", wantPath: "observability.tracing.batch_size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "mesh.yaml")
			if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := config.Load(config.Options{File: file})
			if tc.wantPath == "" {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				tc.check(t, c.Observability)
				return
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error at %s", err, tc.wantPath)
			}
			for _, f := range ce.Fields {
				if f.Path == tc.wantPath {
					if f.Line == 0 {
						t.Errorf("%s: no line number", f.Path)
					}
					return
				}
			}
			t.Errorf("errors %v do not name %s", ce.Fields, tc.wantPath)
		})
	}
}
