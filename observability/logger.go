// Package observability owns what every role uses to be observed: logger
// set-up (zerolog), the Prometheus registry and admin HTTP mux, and the
// agent's per-request instrumentation (Observer.Instrument: RED metrics,
// access log lines and OpenTelemetry spans, recorded once at the outside of
// the handler chain) with its governance and infrastructure metrics.
package observability

import (
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
)

// NewLogger builds the process logger from the log section: JSON lines for
// journald and shippers, or a console format for a terminal.
func NewLogger(c config.Log, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	if c.Format == "text" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}
