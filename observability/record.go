package observability

import (
	"bufio"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshvm/mesh/identity"
)

// Record is what is known about one request while it crosses a listener.
// Instrument creates it and puts it in the request's context; the layers
// inside (routing, policies, the forwarder) fill in what they decide, from
// the handler's goroutine, and Instrument turns it into metrics, an access
// log line and span attributes when the handler returns.
//
// A Record is also the request's context.Context (it wraps the context the
// server gave), so putting it in the request costs no extra allocation.
type Record struct {
	parent context.Context

	// Direction is "inbound" or "outbound"; set by Instrument.
	Direction string
	// LocalService is the service this agent serves; set by Instrument.
	LocalService string
	// UpstreamService is the service the request was routed to. Inbound
	// requests start with LocalService (the app is the upstream).
	UpstreamService string
	// Endpoint is the host:port the request was last sent to.
	Endpoint string
	// Reason says why the mesh answered the request itself (the
	// x-mesh-reason value, e.g. "rate-limited"), set by the layer that
	// refused it (the agent's edge) or relayed an upstream's refusal.
	Reason string
	// Retries is how many times the request was sent again.
	Retries int
	// Peer is the caller's verified identity (zero: none known), and
	// AuthzRule the authorization rule that decided on the request
	// (empty: no authorization ran); set by the inbound side.
	Peer      identity.ID
	AuthzRule string

	start     time.Time
	requestID string
	span      trace.Span
	w         responseWriter
	body      countingBody
	inject    injectCarrier
}

type recordKey struct{}

// RecordFrom returns the Record of the request whose context is ctx, or
// nil when the request is not instrumented. All Record methods accept a
// nil receiver, so callers need not check.
func RecordFrom(ctx context.Context) *Record {
	if r, ok := ctx.(*Record); ok {
		return r
	}
	r, _ := ctx.Value(recordKey{}).(*Record)
	return r
}

// Deadline, Done, Err and Value make a Record the request's context.

func (r *Record) Deadline() (time.Time, bool) { return r.parent.Deadline() }
func (r *Record) Done() <-chan struct{}       { return r.parent.Done() }
func (r *Record) Err() error                  { return r.parent.Err() }
func (r *Record) Value(key any) any {
	if key == (recordKey{}) {
		return r
	}
	return r.parent.Value(key)
}

// SetUpstream records the service and endpoint the request is sent to.
func (r *Record) SetUpstream(service, endpoint string) {
	if r == nil {
		return
	}
	r.UpstreamService = service
	r.Endpoint = endpoint
}

// SetReason records why the mesh answered the request itself.
func (r *Record) SetReason(reason string) {
	if r != nil {
		r.Reason = reason
	}
}

// SetAuthz records the caller's identity (zero: none) and the rule
// that decided on the request.
func (r *Record) SetAuthz(peer identity.ID, rule string) {
	if r != nil {
		r.Peer, r.AuthzRule = peer, rule
	}
}

// AddRetry counts one more attempt.
func (r *Record) AddRetry() {
	if r != nil {
		r.Retries++
	}
}

// RequestID is the request's X-Request-Id (set by Instrument when the
// caller sent none).
func (r *Record) RequestID() string {
	if r == nil {
		return ""
	}
	return r.requestID
}

// Span is the request's span: a server span inbound, a client span
// outbound; a no-op span when tracing is off.
func (r *Record) Span() trace.Span {
	if r == nil || r.span == nil {
		return trace.SpanFromContext(context.Background())
	}
	return r.span
}

// Status is the status written so far (0 before the header is written).
func (r *Record) Status() int {
	if r == nil {
		return 0
	}
	return r.w.status
}

// responseWriter records the status and counts the body bytes written.
// Flush, Hijack and the rest of http.ResponseController reach the
// server's writer through Unwrap.
type responseWriter struct {
	http.ResponseWriter
	status   int
	written  int64
	hijacked bool
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

func (w *responseWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack hands the connection over (HTTP/1.1 upgrades); the request is
// then recorded as a 101 whose later bytes are not counted.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
		if w.status == 0 {
			w.status = http.StatusSwitchingProtocols
		}
	}
	return c, brw, err
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read. The transport may read
// the body from its own goroutine, hence the atomic.
type countingBody struct {
	rc io.ReadCloser
	n  atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// NewRequestID returns a random UUID (version 4): the X-Request-Id the
// mesh gives a request that arrives without one.
func NewRequestID() string {
	const hex = "0123456789abcdef"
	var b [36]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	hi = hi&^(0xf<<12) | 4<<12         // version 4
	lo = lo&^(0x3<<62) | uint64(2)<<62 // variant 10
	j := 0
	for i := 0; i < 32; i++ {
		if i == 8 || i == 12 || i == 16 || i == 20 {
			b[j] = '-'
			j++
		}
		var nib uint64
		if i < 16 {
			nib = hi >> (60 - 4*uint(i)) & 0xf
		} else {
			nib = lo >> (60 - 4*uint(i-16)) & 0xf
		}
		b[j] = hex[nib]
		j++
	}
	return string(b[:])
}
