package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshvm/mesh/httpwire/h1"
)

// serverConn is one downstream HTTP/1.1 connection. Its goroutine reads a
// request, runs the handler, finishes the response, and goes on with the
// next request; nothing else runs per request unless the handler is slow
// (the close watch, see watch).
type serverConn struct {
	s      *Server
	c      net.Conn
	rd     h1.Reader
	ctx    context.Context // cancelled when the client is gone
	cancel context.CancelFunc
	state  atomic.Int32
	remote string
	raw    syscall.RawConn // the descriptor, for waiting without a buffer; nil if none

	hreq h1.Request
	tmpl http.Request // zero: the template of each request
	body reqBody
	w    response

	// The close watch: after watchDelay without the handler returning,
	// one goroutine reads the idle connection to learn that the client
	// left (and cancel ctx).
	watchMu      sync.Mutex
	watchTimer   *time.Timer
	watchGen     uint64 // request number the timer is for
	watchArmed   bool
	watchRunning bool
	watchDone    chan struct{}
	watchByte    [1]byte
	watchGot     bool
	gone         atomic.Bool
	bodyDone     atomic.Bool
	hijacked     bool
}

// idleHold is how long an idle connection keeps its read buffer when it
// cannot wait for bytes without one (no descriptor: TLS, a wrapped conn).
const idleHold = time.Second

var crlfcrlf = []byte("\r\n\r\n")

// watchDelay is how long a request runs before the server starts watching
// its connection for the client leaving.
const watchDelay = 50 * time.Millisecond

// maxDrain is the most of an unread request body read (and dropped) after
// the response so that the connection can carry the next request.
const maxDrain = 64 << 10

func (c *serverConn) serve() {
	defer func() {
		if !c.hijacked {
			c.c.Close()
		}
		c.cancel()
		c.rd.Release()
		c.s.forget(c)
	}()
	c.remote = c.c.RemoteAddr().String()
	first := true
	for n := uint64(1); ; n++ {
		if !c.awaitRequest() {
			return
		}
		if first {
			first = false
			if c.maybeH2() {
				return
			}
		}
		if !c.serveRequest(n) {
			return
		}
		c.state.Store(stateIdle)
		if c.s.closing.Load() {
			return
		}
	}
}

// awaitRequest waits for the first bytes of the next request, holding no
// read buffer while the connection is idle. false: the connection ends.
func (c *serverConn) awaitRequest() bool {
	if c.rd.Buffered() == 0 && c.raw != nil {
		// Wait for readable with no buffer (as nginx does): one is taken
		// from the pool when bytes are there.
		_ = c.c.SetReadDeadline(time.Now().Add(c.s.idleTimeout))
		if err := c.rd.FillRaw(c.raw); err != nil {
			return false
		}
	} else if c.rd.Buffered() == 0 {
		// A busy connection's next request comes soon: wait with the
		// buffer a moment, then without it.
		idle := c.s.idleTimeout
		hold := min(idleHold, idle)
		_ = c.c.SetReadDeadline(time.Now().Add(hold))
		if err := c.rd.Fill(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return false
			}
			c.rd.Release()
			_ = c.c.SetReadDeadline(time.Now().Add(idle - hold))
			var one [1]byte
			n, _ := c.c.Read(one[:])
			if n == 0 {
				return false
			}
			c.rd.Preload(one[:n])
		}
	}
	if !c.state.CompareAndSwap(stateIdle, stateActive) {
		return false // Shutdown closed it
	}
	return true
}

// maybeH2 hands the connection to the HTTP/2 server when it starts with
// the h2c preface.
func (c *serverConn) maybeH2() bool {
	for {
		yes, more := isH2Preface(c.rd.Bytes())
		if yes {
			break
		}
		if !more {
			return false
		}
		if err := c.rd.FillMore(); err != nil {
			return false
		}
	}
	pre := append([]byte(nil), c.rd.Bytes()...)
	c.rd.Discard(len(pre))
	c.rd.Release()
	_ = c.c.SetReadDeadline(time.Time{})
	c.hijacked = true
	c.s.forget(c)
	if !c.s.h2ln.hand(&prefixConn{Conn: c.c, pre: pre}) {
		c.c.Close()
	}
	return true
}

// serveRequest reads and serves one request; false: close the connection.
func (c *serverConn) serveRequest(n uint64) bool {
	if bytes.Index(c.rd.Bytes(), crlfcrlf) < 0 {
		_ = c.c.SetReadDeadline(time.Now().Add(c.s.headerTimeout))
	}
	head, err := c.rd.ReadHead(c.s.maxHeader)
	if err != nil {
		c.refuse(err)
		return false
	}
	c.hreq = h1.Request{}
	if err := h1.ParseRequest(head, &c.hreq); err != nil {
		c.refuse(err)
		return false
	}
	c.rd.Done()
	if c.rd.Buffered() == 0 && !c.hreq.Chunked && c.hreq.ContentLength <= 0 {
		// The head is parsed (its strings are copies): no buffer is held
		// while the handler waits for the upstream.
		c.rd.Release()
	}
	hr := &c.hreq
	kind := h1.Length
	if hr.Chunked {
		kind = h1.Chunked
		// Everything of the body that has arrived is checked before any
		// of it is forwarded: a bad chunk in it means nothing is.
		if err := c.scanChunked(); err != nil {
			c.refuse(err)
			return false
		}
	}
	if hr.ContentLength > 0 || hr.Chunked {
		_ = c.c.SetReadDeadline(time.Time{}) // bodies stream without a deadline
	}
	req, err := c.newRequest(hr)
	if err != nil {
		c.refuse(&h1.Error{Status: http.StatusBadRequest, Msg: err.Error()})
		return false
	}
	c.bodyDone.Store(false)
	c.body.reset(c, kind, hr.ContentLength)
	if c.body.b.Done() {
		req.Body = http.NoBody
		c.bodyDone.Store(true)
	} else {
		req.Body = &c.body
		if hr.Expect100 {
			c.body.b.BeforeRead = c.sendContinue
		}
	}
	c.w.reset(c, req)
	c.armWatch(n)
	aborted := c.runHandler(req)
	c.disarmWatch()
	if req.Body != http.NoBody && !c.body.shut() {
		return false
	}
	if c.hijacked {
		return false
	}
	if aborted || c.gone.Load() {
		return false
	}
	keep := c.w.finish()
	if !keep || hr.Close || c.w.closeAfter {
		return false
	}
	return c.finishBody(hr)
}

// scanChunked checks the framing of what has arrived of a chunked
// request body. When the client sent more than the buffer holds in one
// go, what follows at once (up to maxPrefetch) is read and checked too,
// so that a burst with bad framing is refused before any of it is
// forwarded.
func (c *serverConn) scanChunked() error {
	complete, err := h1.ScanChunked(c.rd.Bytes())
	if err != nil || complete || !c.rd.Full() {
		return err
	}
	defer c.c.SetReadDeadline(time.Time{})
	for !complete && c.rd.Full() && c.rd.Buffered() < maxPrefetch {
		_ = c.c.SetReadDeadline(time.Now().Add(prefetchWait))
		if err := c.rd.FillGrow(maxPrefetch); err != nil {
			return nil // nothing more at once: stream the rest
		}
		if complete, err = h1.ScanChunked(c.rd.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

// Bounds of the look-ahead at a chunked request body.
const (
	maxPrefetch  = 64 << 10
	prefetchWait = 5 * time.Millisecond
)

// runHandler runs the handler; true if it aborted the response (panic).
func (c *serverConn) runHandler(req *http.Request) (aborted bool) {
	defer func() {
		if p := recover(); p != nil {
			aborted = true
			if p != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.log.Error().Str("remote", c.remote).Msg(fmt.Sprintf("panic serving %s: %v\n%s", req.URL.Path, p, buf))
			}
		}
	}()
	c.s.handler.ServeHTTP(&c.w, req)
	return false
}

// finishBody leaves the connection at the next request: a small unread
// body is read and dropped. false: the connection must close.
func (c *serverConn) finishBody(hr *h1.Request) bool {
	b := &c.body.b
	if b.Done() {
		return true
	}
	if b.Broken() || hr.Expect100 && c.body.b.BeforeRead != nil {
		return false // bad framing, or the client waits for a 100 never sent
	}
	if b.Kind() == h1.Length && b.Remaining() > maxDrain {
		return false
	}
	_ = c.c.SetReadDeadline(time.Now().Add(time.Second))
	n, err := io.CopyN(io.Discard, b, maxDrain+1)
	return err == io.EOF && n <= maxDrain
}

// sendContinue answers Expect: 100-continue when the handler first reads
// the body, unless the response has started.
func (c *serverConn) sendContinue() {
	if c.w.committed {
		return
	}
	_, _ = c.c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n"))
}

// refuse answers a request the codec refused (400, 431, 501, 505) and
// closes the connection; timeouts and EOF close it silently.
func (c *serverConn) refuse(err error) {
	var e *h1.Error
	if !errors.As(err, &e) {
		return
	}
	c.s.log.Debug().Err(err).Str("remote", c.remote).Msg("refused a malformed request")
	body := strconv.Itoa(e.Status) + " " + http.StatusText(e.Status) + ": " + e.Msg + "\n"
	out := h1.AppendStatusLine(make([]byte, 0, 256), e.Status)
	out = append(out, "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nX-Mesh-Reason: bad-request\r\nDate: "...)
	out = append(out, h1.Date()...)
	out = append(out, "\r\n"...)
	out = h1.AppendContentLength(out, int64(len(body)))
	out = append(out, "\r\n"...)
	out = append(out, body...)
	_ = c.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.c.Write(out)
	c.lingerClose()
}

// lingerClose half-closes and reads what the client still sends for a
// moment, so that closing does not reset the connection before the
// client read the response.
func (c *serverConn) lingerClose() {
	if tc, ok := c.c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_ = c.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	var buf [512]byte
	for {
		if _, err := c.c.Read(buf[:]); err != nil {
			return
		}
	}
}

// newRequest builds the http.Request the handler sees.
func (c *serverConn) newRequest(hr *h1.Request) (*http.Request, error) {
	u, err := parseTarget(hr.Method, hr.Target)
	if err != nil {
		return nil, err
	}
	req := c.tmpl.WithContext(c.ctx)
	req.Method = hr.Method
	req.URL = u
	req.Proto = "HTTP/1.1"
	req.ProtoMajor, req.ProtoMinor = 1, hr.ProtoMinor
	if hr.ProtoMinor == 0 {
		req.Proto = "HTTP/1.0"
	}
	req.Header = hr.Header
	req.Host = hr.Host
	if u.Host != "" {
		req.Host = u.Host // absolute-form wins (RFC 9112 §3.2.2)
	}
	req.RemoteAddr = c.remote
	req.RequestURI = hr.Target
	req.ContentLength = hr.ContentLength
	if hr.Chunked {
		req.TransferEncoding = chunkedTE
		if tr := hr.Header["Trailer"]; len(tr) > 0 {
			req.Trailer = make(http.Header)
			for _, v := range tr {
				for _, k := range strings.Split(v, ",") {
					if k = strings.TrimSpace(k); k != "" {
						req.Trailer[http.CanonicalHeaderKey(k)] = nil
					}
				}
			}
		}
	}
	req.Close = hr.Close
	return req, nil
}

var chunkedTE = []string{"chunked"}

// parseTarget parses a request-target, without allocating for the common
// origin-form path with a plain query.
func parseTarget(method, t string) (*url.URL, error) {
	if len(t) > 0 && t[0] == '/' {
		path, query, _ := strings.Cut(t, "?")
		if plainPath(path) && !strings.Contains(query, "#") {
			return &url.URL{Path: path, RawQuery: query}, nil
		}
	}
	if method == http.MethodConnect && !strings.HasPrefix(t, "/") {
		return &url.URL{Host: t}, nil
	}
	u, err := url.ParseRequestURI(t)
	if err != nil {
		return nil, fmt.Errorf("malformed request target: %w", err)
	}
	return u, nil
}

// plainPath: only characters url.URL.EscapedPath keeps as they are.
func plainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '/' || c == '-' || c == '_' || c == '.' || c == '~' || c == '$' || c == '&' ||
			c == '+' || c == ',' || c == ':' || c == ';' || c == '=' || c == '@':
		default:
			return false
		}
	}
	return true
}

// armWatch starts the close watch for request n.
func (c *serverConn) armWatch(n uint64) {
	c.watchMu.Lock()
	c.watchGen = n
	c.watchArmed = true
	if c.watchTimer == nil {
		c.watchTimer = time.AfterFunc(watchDelay, c.startWatch)
	} else {
		c.watchTimer.Reset(watchDelay)
	}
	c.watchMu.Unlock()
}

// startWatch runs when a request took watchDelay: once its body is read,
// one goroutine reads the connection until the client leaves or the
// handler returns.
func (c *serverConn) startWatch() {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if !c.watchArmed || c.watchRunning {
		return
	}
	if !c.bodyDone.Load() {
		c.watchTimer.Reset(watchDelay) // still streaming the body in
		return
	}
	c.watchRunning = true
	c.watchDone = make(chan struct{})
	_ = c.c.SetReadDeadline(time.Time{})
	go func(done chan struct{}) {
		defer close(done)
		n, err := c.c.Read(c.watchByte[:])
		if n > 0 {
			c.watchGot = true // a pipelined request's first byte
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.gone.Store(true)
			c.cancel()
		}
	}(c.watchDone)
}

// disarmWatch stops the watch when the handler returned.
func (c *serverConn) disarmWatch() {
	c.watchMu.Lock()
	c.watchArmed = false
	c.watchTimer.Stop()
	running, done := c.watchRunning, c.watchDone
	c.watchRunning = false
	c.watchMu.Unlock()
	if !running {
		return
	}
	_ = c.c.SetReadDeadline(aLongTimeAgo)
	<-done
	_ = c.c.SetReadDeadline(time.Time{})
	if c.watchGot {
		c.watchGot = false
		c.rd.Preload(c.watchByte[:])
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// reqBody is the request body the handler reads (perhaps from another
// goroutine: the forwarder streams bodies while the response comes).
type reqBody struct {
	c      *serverConn
	b      h1.Body
	mu     sync.Mutex
	closed bool
}

func (r *reqBody) reset(c *serverConn, kind h1.BodyKind, n int64) {
	r.c = c
	r.closed = false
	r.b.Reset(&c.rd, kind, n)
}

var errBodyAfterHandler = errors.New("request body read after the handler returned")

// shut ends reading by others when the handler returned; false means a
// read was still under way (it was interrupted) and the connection must
// close.
func (r *reqBody) shut() bool {
	if r.mu.TryLock() {
		r.closed = true
		r.mu.Unlock()
		return true
	}
	_ = r.c.c.SetReadDeadline(aLongTimeAgo)
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return false
}

func (r *reqBody) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errBodyAfterHandler
	}
	n, err := r.b.Read(p)
	if err != nil {
		if err == io.EOF {
			r.c.bodyDone.Store(true)
		} else if !h1.IsFraming(err) {
			// The client went away mid-body.
			r.c.gone.Store(true)
			r.c.cancel()
		}
	}
	return n, err
}

// Close is a no-op: the server reads or drops what is left.
func (r *reqBody) Close() error { return nil }

// Buffered reports how many body bytes can be read without waiting.
func (r *reqBody) Buffered() int { return r.c.rd.Buffered() }

// response is the http.ResponseWriter of one request. Small responses are
// written with one system call when the handler returns; a Flush or a
// full buffer sends what is there (chunked when the length is unknown).
type response struct {
	c      *serverConn
	req    *http.Request
	header http.Header

	status     int
	wrote      bool // WriteHeader was called
	committed  bool // the head went out (or into out)
	noBody     bool
	chunked    bool
	closeAfter bool
	declared   int64 // Content-Length of the head, -1 none
	written    int64 // body bytes accepted
	failed     error // a write to the client failed

	out  []byte  // bytes to send (head and framed body)
	outp *[]byte // pooled buffer of out
	pend []byte  // body bytes before the head is committed
	penp *[]byte
}

func (w *response) reset(c *serverConn, req *http.Request) {
	*w = response{c: c, req: req, declared: -1}
}

func (w *response) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header, 8)
	}
	return w.header
}

// EnableFullDuplex is accepted: request bodies can always be read while
// the response is written.
func (w *response) EnableFullDuplex() error { return nil }

func (w *response) WriteHeader(code int) {
	if w.wrote {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.wrote = true
	w.status = code
}

// writeInterim sends a 1xx response at once.
func (w *response) writeInterim(code int) {
	if w.committed || w.req.ProtoMinor == 0 {
		return
	}
	b := h1.AppendStatusLine(make([]byte, 0, 128), code)
	b = h1.AppendHeader(b, w.header, nil)
	b = append(b, "\r\n"...)
	_, _ = w.c.c.Write(b)
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed != nil {
		return 0, w.failed
	}
	if w.noBodyStatus() {
		if w.status == http.StatusNoContent || w.status == http.StatusNotModified {
			return 0, http.ErrBodyNotAllowed
		}
		return len(p), nil // HEAD: dropped
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	if !w.committed {
		if w.penp == nil {
			w.penp = h1.GetBuffer()
			w.pend = (*w.penp)[:0]
		}
		if len(w.pend)+len(p) <= cap(w.pend) {
			w.pend = append(w.pend, p...)
			w.written += int64(len(p))
			return len(p), nil
		}
		w.commit(false)
	}
	w.written += int64(len(p))
	if err := w.writeBody(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *response) noBodyStatus() bool {
	return w.req.Method == http.MethodHead || w.status == http.StatusNoContent ||
		w.status == http.StatusNotModified || (w.status >= 100 && w.status < 200)
}

// writeBody frames p (after the head went into out) and sends out when it
// is full.
func (w *response) writeBody(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if w.chunked {
		w.out = h1.AppendChunkHeader(w.out, len(p))
	}
	if len(w.out)+len(p)+2 <= cap(w.out) {
		w.out = append(w.out, p...)
		if w.chunked {
			w.out = append(w.out, "\r\n"...)
		}
		return nil
	}
	// Large: one writev of what is buffered and p.
	bufs := net.Buffers{w.out, p}
	if w.chunked {
		bufs = append(bufs, crlf)
	}
	_, err := bufs.WriteTo(w.c.c)
	w.out = w.out[:0]
	if err != nil {
		w.failed = err
	}
	return err
}

var crlf = []byte("\r\n")

// commit serializes the head into out, followed by the pending body.
// final: the handler returned, so the body is all in pend.
func (w *response) commit(final bool) {
	if w.committed {
		return
	}
	w.committed = true
	if !w.wrote {
		w.wrote, w.status = true, http.StatusOK
	}
	h := w.header
	w.outp = h1.GetBuffer()
	out := (*w.outp)[:0]
	out = h1.AppendStatusLine(out, w.status)
	_, hasTrailer := h["Trailer"]
	// A handler (the relay of a chunked response) may ask for chunked.
	forceChunked := w.req.ProtoMinor == 1 && hasToken(h["Transfer-Encoding"], "chunked")
	if cl := h["Content-Length"]; len(cl) > 0 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.declared = n
		}
	}
	noBody := w.noBodyStatus()
	w.noBody = noBody
	if hasToken(h["Connection"], "close") || w.c.s.closing.Load() || w.req.Close || w.c.body.b.Broken() {
		w.closeAfter = true
	}
	switch {
	case noBody:
	case w.declared >= 0:
	case final && !hasTrailer && !forceChunked:
		w.declared = int64(len(w.pend))
		out = h1.AppendContentLength(out, w.declared)
	case w.req.ProtoMinor == 1:
		w.chunked = true
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	default:
		w.closeAfter = true // HTTP/1.0: the close ends the body
	}
	out = h1.AppendHeader(out, h, skipInHead)
	if len(h["Date"]) == 0 {
		out = append(out, "Date: "...)
		out = append(out, h1.Date()...)
		out = append(out, "\r\n"...)
	}
	if w.closeAfter {
		if !hasToken(h["Connection"], "close") {
			out = append(out, "Connection: close\r\n"...)
		}
	} else if w.req.ProtoMinor == 0 {
		out = append(out, "Connection: keep-alive\r\n"...)
	}
	out = append(out, "\r\n"...)
	if cap(out) > h1.BufferSize {
		// The head outgrew the buffer: keep the larger one.
		h1.PutBuffer(w.outp)
		w.outp = nil
	}
	w.out = out
	if len(w.pend) > 0 {
		_ = w.writeBody(w.pend)
	}
	if w.penp != nil {
		h1.PutBuffer(w.penp)
		w.penp, w.pend = nil, nil
	}
}

// skipInHead: fields the server writes itself, and trailers.
func skipInHead(k string) bool {
	switch k {
	case "Transfer-Encoding", "Keep-Alive":
		return true
	}
	return strings.HasPrefix(k, http.TrailerPrefix)
}

// Flush sends what is buffered: the head, and the body so far.
func (w *response) Flush() {
	w.commit(false)
	w.send()
}

// FlushError is Flush, reporting a failed write.
func (w *response) FlushError() error {
	w.Flush()
	return w.failed
}

func (w *response) send() {
	if len(w.out) == 0 || w.failed != nil {
		return
	}
	if _, err := w.c.c.Write(w.out); err != nil {
		w.failed = err
	}
	w.out = w.out[:0]
}

// finish ends the response when the handler returned; false means the
// connection must close (the body is incomplete or the client is gone).
func (w *response) finish() bool {
	if !w.committed {
		w.commit(true)
	}
	keep := true
	if w.chunked {
		w.out = h1.AppendLastChunk(w.out, w.trailers())
	} else if !w.noBody && w.declared >= 0 && w.written < w.declared {
		keep = false // the client sees a short body and the close
	}
	w.send()
	if w.outp != nil {
		h1.PutBuffer(w.outp)
	}
	w.outp, w.out = nil, nil
	return keep && w.failed == nil
}

// trailers collects the trailer fields: "Trailer:"-prefixed keys and the
// declared ones.
func (w *response) trailers() http.Header {
	var tr http.Header
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if tr == nil {
				tr = make(http.Header)
			}
			tr[http.CanonicalHeaderKey(k[len(http.TrailerPrefix):])] = vv
		}
	}
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if vv, ok := w.header[k]; ok && len(vv) > 0 {
				if tr == nil {
					tr = make(http.Header)
				}
				if _, set := tr[k]; !set {
					tr[k] = vv
				}
			}
		}
	}
	return tr
}

// Hijack hands the connection to the handler (an upgrade). Bytes the
// server had read past the head come first from the returned reader.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if w.committed {
		return nil, nil, errors.New("hijack after the response started")
	}
	if c.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wrote {
		// A head the handler wrote (a 101) goes out first, as net/http does.
		w.commit(false)
		w.send()
		if w.outp != nil {
			h1.PutBuffer(w.outp)
		}
		w.outp, w.out = nil, nil
	}
	c.disarmWatch()
	c.hijacked = true
	c.s.forget(c)
	_ = c.c.SetDeadline(time.Time{})
	rest := append([]byte(nil), c.rd.Bytes()...)
	c.rd.Discard(len(rest))
	pc := &prefixConn{Conn: c.c, pre: rest}
	return c.c, bufio.NewReadWriter(bufio.NewReader(pc), bufio.NewWriter(c.c)), nil
}

// SetReadDeadline and SetWriteDeadline let http.ResponseController set
// the connection's deadlines.
func (w *response) SetReadDeadline(t time.Time) error  { return w.c.c.SetReadDeadline(t) }
func (w *response) SetWriteDeadline(t time.Time) error { return w.c.c.SetWriteDeadline(t) }
