// Package observability owns what every role uses to be observed: logger
// set-up (zerolog), the Prometheus registry and admin HTTP mux, and the
// agent's per-request instrumentation (Observer.Instrument: RED metrics,
// access log lines and OpenTelemetry spans, recorded once at the outside of
// the handler chain) with its governance and infrastructure metrics.
package observability

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/meshvm/mesh/config"
)

// Durations in every log line of the process are written as in the config
// ("drain_period":"5s", not 5000): zerolog's format for them is a package
// setting, set once here before any logger exists.
func init() { zerolog.DurationFieldFormat = zerolog.DurationFormatString }

// LogEnv is what NewLogger reads from the process environment to pick its
// output; LogEnvFromOS fills it.
type LogEnv struct {
	// NoColor is set when NO_COLOR is set to anything non-empty
	// (https://no-color.org).
	NoColor bool
	// JournalStream is $JOURNAL_STREAM ("dev:inode" of the journal
	// stream systemd connected stdout/stderr to), "" outside systemd.
	JournalStream string
}

// LogEnvFromOS reads NO_COLOR and JOURNAL_STREAM.
func LogEnvFromOS() LogEnv {
	return LogEnv{NoColor: os.Getenv("NO_COLOR") != "", JournalStream: os.Getenv("JOURNAL_STREAM")}
}

// NewLogger builds the process logger from the log section: JSON lines
// for journald and shippers, or a console format for reading by eye
// (coloured only when w is a terminal and NO_COLOR is unset). When w is
// the stream systemd connected to the journal (JOURNAL_STREAM names its
// device and inode), each line starts with its syslog priority ("<4>" for
// warn), which journald turns into PRIORITY= and strips (the units set
// SyslogLevelPrefix=yes); the JSON itself is unchanged.
func NewLogger(c config.Log, w io.Writer) zerolog.Logger {
	return NewLoggerEnv(c, w, LogEnvFromOS())
}

// NewLoggerEnv is NewLogger with the environment given.
func NewLoggerEnv(c config.Log, w io.Writer, env LogEnv) zerolog.Logger {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	var format func(out io.Writer) io.Writer // nil: JSON as is
	if c.Format == "text" {
		color := !env.NoColor && isTerminal(w)
		format = func(out io.Writer) io.Writer {
			return zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: !color}
		}
	}
	var out io.Writer = w
	switch {
	case isJournalStream(w, env.JournalStream):
		out = &journalWriter{out: w, format: format}
	case format != nil:
		out = format(w)
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
}

// isTerminal reports whether w is a file open on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// isJournalStream reports whether w is the journal stream named by
// journalStream ("dev:inode", from JOURNAL_STREAM): systemd sets the
// variable for the process, but its stderr may have been redirected since,
// so the file itself is compared.
func isJournalStream(w io.Writer, journalStream string) bool {
	if journalStream == "" {
		return false
	}
	devS, inoS, ok := strings.Cut(journalStream, ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devS, 10, 64)
	ino, err2 := strconv.ParseUint(inoS, 10, 64)
	f, isFile := w.(interface{ Fd() uintptr })
	if err1 != nil || err2 != nil || !isFile {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// SyslogPriority is the syslog priority journald records for a level:
// debug and trace 7, info 6, warn 4, error 3, fatal and panic 2.
func SyslogPriority(l zerolog.Level) int {
	switch l {
	case zerolog.TraceLevel, zerolog.DebugLevel:
		return 7
	case zerolog.WarnLevel:
		return 4
	case zerolog.ErrorLevel:
		return 3
	case zerolog.FatalLevel, zerolog.PanicLevel:
		return 2
	default:
		return 6
	}
}

// journalWriter prefixes every line with "<N>", its syslog priority, and
// writes it in one write, so lines from concurrent goroutines stay whole.
type journalWriter struct {
	out    io.Writer
	format func(io.Writer) io.Writer // nil: the JSON line as is

	mu  sync.Mutex
	buf bytes.Buffer
}

func (j *journalWriter) Write(p []byte) (int, error) { return j.WriteLevel(zerolog.NoLevel, p) }

func (j *journalWriter) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf.Reset()
	fmt.Fprintf(&j.buf, "<%d>", SyslogPriority(l))
	if j.format != nil {
		if _, err := j.format(&j.buf).Write(p); err != nil {
			return 0, err
		}
	} else {
		j.buf.Write(p)
	}
	if _, err := j.out.Write(j.buf.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}
