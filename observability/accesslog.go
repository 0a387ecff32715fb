package observability

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/identity"
)

// accessLog writes one line per request (or per sampled request) through
// zerolog to stdout, stderr or a file that can be reopened.
type accessLog struct {
	log zerolog.Logger
	out *logWriter
	// fields and the sampling are read per request and changed by a
	// config reload.
	fields    atomic.Uint32 // a fieldSet
	threshold atomic.Uint64 // log when rand.Uint64() < threshold; all when sampleAll
	sampleAll atomic.Bool
}

// fieldSet is a bit per access log field (config.AccessLogFields order).
type fieldSet uint32

const (
	fTraceID fieldSet = 1 << iota
	fSpanID
	fRequestID
	fDirection
	fLocalService
	fMethod
	fAuthority
	fPath
	fProtocol
	fStatus
	fGRPCStatus
	fReason
	fBytesIn
	fBytesOut
	fDuration
	fUpstream
	fEndpoint
	fRetries
	fCaller
	fUserAgent
	fPeerIdentity
	fAuthzRule
)

// maxLoggedLen bounds the caller-controlled strings in a line.
const maxLoggedLen = 1024

func newAccessLog(c config.AccessLog, stdout io.Writer, writeErrors prometheus.Counter) (*accessLog, error) {
	w, err := newLogWriter(c.Output, stdout, c.FlushInterval > 0, writeErrors)
	if err != nil {
		return nil, err
	}
	var out io.Writer = w
	if c.Format == "text" {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !colorFor(c.Output)}
	}
	a := &accessLog{log: zerolog.New(out), out: w}
	if err := a.set(c.Fields, c.SampleRatio); err != nil {
		_ = w.Close()
		return nil, err
	}
	return a, nil
}

// set applies the field list and the sample ratio (at start and on a
// config reload).
func (a *accessLog) set(fields []string, ratio float64) error {
	var set fieldSet
	if len(fields) == 0 {
		set = 1<<len(config.AccessLogFields) - 1
	}
	for _, f := range fields {
		i := indexOf(config.AccessLogFields, f)
		if i < 0 {
			return fmt.Errorf("unknown access log field %q", f)
		}
		set |= 1 << i
	}
	a.fields.Store(uint32(set))
	a.sampleAll.Store(ratio >= 1)
	if ratio < 1 {
		a.threshold.Store(uint64(ratio * math.MaxUint64))
	}
	return nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// colorFor reports whether text lines to output may be coloured: only on
// a terminal, and not when NO_COLOR is set.
func colorFor(output string) bool {
	if LogEnvFromOS().NoColor {
		return false
	}
	switch output {
	case "stdout":
		return isTerminal(os.Stdout)
	case "stderr":
		return isTerminal(os.Stderr)
	default:
		return false
	}
}

func (a *accessLog) sampled() bool {
	return a.sampleAll.Load() || rand.Uint64() < a.threshold.Load()
}

// write logs rec, which has finished, for request r.
func (a *accessLog) write(rec *Record, r *http.Request, status int, reason string, end time.Time) {
	f := fieldSet(a.fields.Load())
	e := a.log.Log()
	var tb [40]byte
	e.RawJSON("time", appendQuotedTime(tb[:0], rec.start))
	if rec.span != nil {
		if sc := rec.span.SpanContext(); sc.IsValid() {
			if f&fTraceID != 0 {
				tid := sc.TraceID()
				e.Hex("trace_id", tid[:])
			}
			if f&fSpanID != 0 {
				sid := sc.SpanID()
				e.Hex("span_id", sid[:])
			}
		}
	}
	if f&fRequestID != 0 {
		e.Str("request_id", clip(rec.requestID))
	}
	if f&fDirection != 0 {
		e.Str("direction", rec.Direction)
	}
	if f&fLocalService != 0 {
		e.Str("local_service", rec.LocalService)
	}
	if f&fMethod != 0 {
		e.Str("method", clip(r.Method))
	}
	if f&fAuthority != 0 {
		e.Str("authority", clip(r.Host))
	}
	if f&fPath != 0 {
		e.Str("path", clip(r.URL.Path))
	}
	if f&fProtocol != 0 {
		e.Str("protocol", r.Proto)
	}
	if f&fStatus != 0 {
		e.Int("status", status)
	}
	if f&fGRPCStatus != 0 {
		if gs := grpcStatus(rec.w.Header()); gs != "" {
			e.Str("grpc_status", clip(gs))
		}
	}
	if f&fReason != 0 && reason != "" {
		e.Str("reason", clip(reason))
	}
	if f&fBytesIn != 0 {
		e.Int64("bytes_in", rec.body.n.Load())
	}
	if f&fBytesOut != 0 {
		e.Int64("bytes_out", rec.w.written)
	}
	if f&fDuration != 0 {
		var b [24]byte
		e.RawJSON("duration_ms", appendMillis(b[:0], end.Sub(rec.start).Microseconds()))
	}
	if f&fUpstream != 0 && rec.UpstreamService != "" {
		e.Str("upstream_service", clip(rec.UpstreamService))
	}
	if f&fEndpoint != 0 && rec.Endpoint != "" {
		e.Str("endpoint", clip(rec.Endpoint))
	}
	if f&fRetries != 0 && rec.Retries > 0 {
		e.Int("retries", rec.Retries)
	}
	if f&fCaller != 0 {
		e.Str("caller", r.RemoteAddr)
	}
	if f&fUserAgent != 0 {
		if ua := r.Header["User-Agent"]; len(ua) > 0 {
			e.Str("user_agent", clip(ua[0]))
		}
	}
	if f&fPeerIdentity != 0 && rec.Peer.Service != "" {
		var b [256]byte
		e.Bytes("peer_identity", appendID(b[:0], rec.Peer))
	}
	if f&fAuthzRule != 0 && rec.AuthzRule != "" {
		e.Str("authz_rule", rec.AuthzRule)
	}
	e.Send()
}

// grpcStatus is the grpc-status of a gRPC response: in the trailers, or in
// the headers of a trailers-only response.
func grpcStatus(h http.Header) string {
	if v := h["Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	if v := h[http.TrailerPrefix+"Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// appendID appends id's SPIFFE URI without building a string.
func appendID(b []byte, id identity.ID) []byte {
	b = append(b, "spiffe://"...)
	b = append(b, id.TrustDomain...)
	b = append(b, "/ns/"...)
	b = append(b, id.Namespace...)
	b = append(b, "/svc/"...)
	return append(b, id.Service...)
}

func clip(s string) string {
	if len(s) > maxLoggedLen {
		return s[:maxLoggedLen]
	}
	return s
}

// appendQuotedTime appends t as a quoted RFC 3339 UTC time with
// milliseconds. It writes the digits itself: time.Time.AppendFormat
// parses its layout on every call, ~3% of an agent's CPU per request at
// one connection (docs/decisions.md, decision 45).
func appendQuotedTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		b = append(b, '"')
		b = t.AppendFormat(b, timeLayout)
		return append(b, '"')
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	return append(b, '"',
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+int(month)/10), byte('0'+int(month)%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z', '"')
}

// timeLayout is the access log's time format (what appendQuotedTime
// writes).
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// logWriter is the access log's destination: stdout, stderr or a file
// that Reopen replaces (after logrotate moved it). Lines may be buffered;
// Flush writes them out.
type logWriter struct {
	mu     sync.Mutex
	path   string // "" for stdout/stderr
	file   *os.File
	out    io.Writer
	buf    *bufio.Writer // nil when every line is written at once
	errors prometheus.Counter
}

func newLogWriter(output string, stdout io.Writer, buffered bool, errs prometheus.Counter) (*logWriter, error) {
	w := &logWriter{errors: errs}
	switch output {
	case "stdout":
		w.out = stdout
	case "stderr":
		w.out = os.Stderr
	default:
		f, err := openLogFile(output)
		if err != nil {
			return nil, err
		}
		w.path, w.file, w.out = output, f, f
	}
	if buffered {
		w.buf = bufio.NewWriterSize(w.out, 64<<10)
	}
	return w, nil
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open access log: %w", err)
	}
	return f, nil
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int
	var err error
	if w.buf != nil {
		n, err = w.buf.Write(p)
	} else {
		n, err = w.out.Write(p)
	}
	if err != nil {
		w.errors.Inc()
	}
	return n, err
}

// Flush writes buffered lines out.
func (w *logWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *logWriter) flushLocked() error {
	if w.buf == nil || w.buf.Buffered() == 0 {
		return nil
	}
	if err := w.buf.Flush(); err != nil {
		w.errors.Inc()
		w.buf.Reset(w.out) // drop what cannot be written rather than wedge
		return fmt.Errorf("write access log: %w", err)
	}
	return nil
}

// Reopen flushes, then opens the file's path again and writes there from
// now on: after logrotate renamed the file, lines go to a new one. It does
// nothing for stdout and stderr.
func (w *logWriter) Reopen() error {
	if w.path == "" {
		return nil
	}
	f, err := openLogFile(w.path)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	ferr := w.flushLocked()
	old := w.file
	w.file, w.out = f, f
	if w.buf != nil {
		w.buf.Reset(f)
	}
	if err := old.Close(); err != nil && ferr == nil {
		ferr = fmt.Errorf("close rotated access log: %w", err)
	}
	return ferr
}

// Close flushes and closes the file (not stdout or stderr).
func (w *logWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.flushLocked()
	if w.file != nil {
		if cerr := w.file.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close access log: %w", cerr)
		}
		w.file = nil
		w.out = io.Discard
		if w.buf != nil {
			w.buf.Reset(io.Discard)
		}
	}
	return err
}

// appendMillis writes us microseconds as milliseconds, as strconv's
// shortest form of us/1000 reads ("12.345", "0.5", "3"), without its float
// formatting (a tenth of the access log's cost).
func appendMillis(b []byte, us int64) []byte {
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	if frac == 0 {
		return b
	}
	d := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	n := 3
	for d[n-1] == '0' {
		n--
	}
	b = append(b, '.')
	return append(b, d[:n]...)
}
