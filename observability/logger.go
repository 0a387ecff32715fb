// Package observability owns what every role uses to be observed: logger
// set-up (zerolog), the Prometheus registry, tracing set-up and the admin
// HTTP mux.
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
