package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshvm/mesh/httpwire/h1"
)

// h1Client sends HTTP/1.1 requests over pooled keep-alive connections
// with the httpwire/h1 codec. A request is written and its response read
// on the caller's goroutine; only a streamed request body (unknown or
// large length) gets a goroutine of its own, to flow while the response
// does. Idle connections hold no buffer.
type h1Client struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle map[string][]*clientConn // per address, most recently used last
}

// Limits of the client.
const (
	maxResponseHead = 64 << 10
	// inlineBody: request bodies up to this length are read whole and
	// written with the head; longer ones stream.
	inlineBody = 64 << 10
)

func newH1Client(dial func(ctx context.Context, network, addr string) (net.Conn, error), maxIdle int, idleTimeout time.Duration) *h1Client {
	return &h1Client{dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout, idle: map[string][]*clientConn{}}
}

// clientConn is one upstream connection.
type clientConn struct {
	cl     *h1Client
	addr   string
	c      net.Conn
	rd     h1.Reader
	raw    syscall.RawConn // the descriptor, for waiting without a buffer; nil if none
	idleAt time.Time
	reused bool

	// The cancel watch of the exchange under way (see watch).
	watchMu    sync.Mutex
	watchTimer *time.Timer
	watchCtx   context.Context // nil: no exchange is watched
	watchStop  func() bool     // the context.AfterFunc registered late, or nil
}

// cancelWatchDelay is how long an exchange runs before its context is
// watched (context.AfterFunc) so that a cancel or a deadline closes the
// connection. Most exchanges end sooner and never pay for it: the
// AfterFunc, registered on a fresh per-try context, was ~5 allocations
// and ~640 bytes per request (docs/decisions.md, decision 45).
const cancelWatchDelay = 20 * time.Millisecond

// watch starts watching ctx for the exchange: after cancelWatchDelay, or
// at ctx's deadline if that comes first, a cancelled ctx closes the
// connection. The connection's timer is reused from one exchange to the
// next.
func (cc *clientConn) watch(ctx context.Context) {
	d := cancelWatchDelay
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	cc.watchMu.Lock()
	cc.watchCtx = ctx
	if cc.watchTimer == nil {
		cc.watchTimer = time.AfterFunc(d, cc.lateWatch)
	} else {
		cc.watchTimer.Reset(d)
	}
	cc.watchMu.Unlock()
}

// lateWatch runs when an exchange outlived cancelWatchDelay (or reached
// its deadline): from now on the end of its context closes the
// connection (at once if it has ended).
func (cc *clientConn) lateWatch() {
	cc.watchMu.Lock()
	defer cc.watchMu.Unlock()
	if cc.watchCtx == nil || cc.watchStop != nil {
		return
	}
	cc.watchStop = context.AfterFunc(cc.watchCtx, func() { cc.c.Close() })
}

// unwatch ends the watch of the exchange; false means its context ended
// (the connection is or will be closed, and must not be reused).
func (cc *clientConn) unwatch() bool {
	cc.watchMu.Lock()
	ctx, stop := cc.watchCtx, cc.watchStop
	cc.watchCtx, cc.watchStop = nil, nil
	if cc.watchTimer != nil {
		cc.watchTimer.Stop()
	}
	cc.watchMu.Unlock()
	if stop != nil && !stop() {
		return false
	}
	return ctx == nil || ctx.Err() == nil
}

func (cl *h1Client) get(ctx context.Context, addr string) (*clientConn, error) {
	now := time.Now()
	cl.mu.Lock()
	for {
		list := cl.idle[addr]
		if len(list) == 0 {
			break
		}
		cc := list[len(list)-1]
		list[len(list)-1] = nil
		cl.idle[addr] = list[:len(list)-1]
		if now.Sub(cc.idleAt) > cl.idleTimeout {
			cc.c.Close()
			continue
		}
		cl.mu.Unlock()
		cc.reused = true
		return cc, nil
	}
	cl.mu.Unlock()
	c, err := cl.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cc := &clientConn{cl: cl, addr: addr, c: c}
	cc.rd.Reset(c)
	// Only a conn whose bytes are the descriptor's (plain TCP) may be read
	// through it: a wrapper that decrypts or buffers (TLS, a peeked
	// prefix) must not expose SyscallConn.
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			cc.raw = rc
		}
	}
	return cc, nil
}

// put pools cc for the next request to its address.
func (cl *h1Client) put(cc *clientConn) {
	if cc.rd.Buffered() > 0 { // bytes nobody asked for: not reusable
		cc.c.Close()
		return
	}
	cc.rd.Release()
	now := time.Now()
	cc.idleAt = now
	cl.mu.Lock()
	list := cl.idle[cc.addr]
	if len(list) > 0 && now.Sub(list[0].idleAt) > cl.idleTimeout {
		list[0].c.Close() // the oldest went stale
		copy(list, list[1:])
		list = list[:len(list)-1]
	}
	if len(list) >= cl.maxIdle {
		cl.mu.Unlock()
		cc.c.Close()
		return
	}
	cl.idle[cc.addr] = append(list, cc)
	cl.mu.Unlock()
}

// closeIdle closes every pooled connection.
func (cl *h1Client) closeIdle() {
	cl.mu.Lock()
	idle := cl.idle
	cl.idle = map[string][]*clientConn{}
	cl.mu.Unlock()
	for _, list := range idle {
		for _, cc := range list {
			cc.c.Close()
		}
	}
}

// protocolError is a response the codec refused (the app broke HTTP/1.1).
type protocolError struct{ err error }

func (e *protocolError) Error() string { return "upstream response: " + e.err.Error() }
func (e *protocolError) Unwrap() error { return e.err }

// bodyError is a failure reading the client's request body.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// roundTrip sends out (a request built by Send) with body and returns the
// response with its body unread.
func (cl *h1Client) roundTrip(ctx context.Context, out *http.Request, body io.Reader) (*http.Response, error) {
	head := h1.GetBuffer()
	defer func() {
		if head != nil {
			h1.PutBuffer(head)
		}
	}()
	b := appendRequestHead((*head)[:0], out, body)
	var inline []byte // the whole body, sent with the head
	streamed := false
	if body != nil {
		if n := out.ContentLength; n > 0 && n <= inlineBody {
			if len(b)+int(n) <= cap(b) {
				inline = b[len(b) : len(b)+int(n)]
			} else {
				inline = make([]byte, n)
			}
			if _, err := io.ReadFull(body, inline); err != nil {
				return nil, &bodyError{err}
			}
			if len(b)+int(n) <= cap(b) {
				b = b[:len(b)+int(n)]
				inline = nil
			}
		} else {
			streamed = true
		}
	}
	for attempt := 0; ; attempt++ {
		if head == nil { // given back by the attempt before
			head = h1.GetBuffer()
			b = appendRequestHead((*head)[:0], out, body)
		}
		cc, err := cl.get(ctx, out.URL.Host)
		if err != nil {
			return nil, err
		}
		// Without a body the head can be rebuilt for a second attempt:
		// its buffer goes back once written, not held while the
		// upstream works.
		var giveBack *[]byte
		if body == nil {
			giveBack, head = head, nil
		}
		resp, err := cc.exchange(ctx, out, b, inline, body, streamed, giveBack)
		if err == nil {
			return resp, nil
		}
		var se *staleError
		if errors.As(err, &se) && attempt == 0 && ctx.Err() == nil {
			continue // the pooled connection was closed by the app: once more on a new one
		}
		if se != nil {
			err = se.err
		}
		return nil, err
	}
}

// staleError: a reused connection failed before any response byte came,
// and the request can be sent again.
type staleError struct{ err error }

func (e *staleError) Error() string { return e.err.Error() }

// exchange writes the request on cc and reads the response head.
// giveBack, if not nil, is head's buffer, returned to the pool once head
// is written.
func (cc *clientConn) exchange(ctx context.Context, out *http.Request, head, inline []byte, body io.Reader, streamed bool, giveBack *[]byte) (*http.Response, error) {
	cc.watch(ctx)
	fail := func(err error, replayable bool) (*http.Response, error) {
		cc.unwatch()
		cc.c.Close()
		if cc.reused && replayable && ctx.Err() == nil {
			return nil, &staleError{err}
		}
		return nil, err
	}
	var err error
	if inline != nil {
		bufs := net.Buffers{head, inline}
		_, err = bufs.WriteTo(cc.c)
	} else {
		_, err = cc.c.Write(head)
	}
	if giveBack != nil {
		h1.PutBuffer(giveBack)
	}
	if err != nil {
		return fail(err, !streamed)
	}
	var wr *bodyWriter
	if streamed {
		wr = &bodyWriter{cc: cc, chunked: out.ContentLength < 0, n: out.ContentLength, trailer: out.Trailer, done: make(chan struct{})}
		go wr.run(body)
	}
	var resp h1.Response
	for interim := 0; ; interim++ {
		var err error
		if cc.raw != nil && cc.rd.Buffered() == 0 {
			// No buffer is held while the upstream works on the request.
			err = cc.rd.FillRaw(cc.raw)
		}
		var h []byte
		if err == nil {
			h, err = cc.rd.ReadHead(maxResponseHead)
		}
		if err != nil {
			if wr != nil {
				stopWriter(wr, cc)
				if e := wr.err.Load(); e != nil {
					return fail(e, false)
				}
			}
			if h1.IsFraming(err) {
				return fail(&protocolError{err}, false)
			}
			return fail(err, !streamed && cc.rd.Buffered() == 0)
		}
		if err := h1.ParseResponse(h, out.Method, &resp); err != nil {
			if wr != nil {
				stopWriter(wr, cc)
			}
			return fail(&protocolError{err}, false)
		}
		cc.rd.Done()
		if resp.Status >= 200 || resp.Status == http.StatusSwitchingProtocols {
			break
		}
		if interim >= 8 {
			if wr != nil {
				stopWriter(wr, cc)
			}
			return fail(&protocolError{errors.New("too many 1xx responses")}, false)
		}
	}
	r := &http.Response{
		Status:        statusText(resp.Status),
		StatusCode:    resp.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    resp.ProtoMinor,
		Header:        resp.Header,
		ContentLength: resp.ContentLength,
		Close:         resp.Close,
		Request:       out,
	}
	if resp.ProtoMinor == 0 {
		r.Proto = "HTTP/1.0"
	}
	if tr := resp.Header["Trailer"]; len(tr) > 0 && resp.Chunked {
		r.Trailer = make(http.Header)
		for _, v := range tr {
			for _, k := range strings.Split(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					r.Trailer[http.CanonicalHeaderKey(k)] = nil
				}
			}
		}
	}
	if resp.Status == http.StatusSwitchingProtocols {
		cc.unwatch() // an upgraded connection lives as long as the client's
		r.ContentLength = -1
		r.Body = &upgradeBody{cc: cc}
		return r, nil
	}
	cb := &clientBody{cc: cc, resp: r, wr: wr, close: resp.Close || out.Close}
	switch {
	case resp.NoBody:
		cb.b.Reset(&cc.rd, h1.NoBody, 0)
		if out.Method == http.MethodHead {
			r.ContentLength = resp.ContentLength
		} else {
			r.ContentLength = 0
		}
	case resp.Chunked:
		cb.b.Reset(&cc.rd, h1.Chunked, -1)
	case resp.ContentLength >= 0:
		cb.b.Reset(&cc.rd, h1.Length, resp.ContentLength)
	default:
		cb.b.Reset(&cc.rd, h1.UntilClose, -1)
	}
	r.Body = cb
	if cb.b.Done() {
		cb.release(true)
	}
	return r, nil
}

// stopWriter ends the body writer's use of the connection after the
// response failed. A writer blocked reading the client's body is not
// waited for: the server stops it when the handler returns.
func stopWriter(wr *bodyWriter, cc *clientConn) {
	select {
	case <-wr.done:
	default:
		cc.c.Close()
	}
}

var statusTexts sync.Map // int -> string

func statusText(code int) string {
	if v, ok := statusTexts.Load(code); ok {
		return v.(string)
	}
	s := strconv.Itoa(code) + " " + http.StatusText(code)
	statusTexts.Store(code, s)
	return s
}

// appendRequestHead writes the request line and fields of out.
func appendRequestHead(b []byte, out *http.Request, body io.Reader) []byte {
	target := out.URL.EscapedPath()
	if target == "" {
		target = "/"
	}
	if out.URL.RawQuery != "" {
		target += "?" + out.URL.RawQuery
	}
	b = h1.AppendRequestLine(b, out.Method, target)
	host := out.Host
	if host == "" {
		host = out.URL.Host
	}
	b = h1.AppendField(b, "Host", host)
	b = h1.AppendHeader(b, out.Header, skipInRequest)
	switch {
	case body != nil && out.ContentLength > 0:
		b = h1.AppendContentLength(b, out.ContentLength)
	case body != nil && out.ContentLength < 0:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if len(out.Trailer) > 0 {
			keys := make([]string, 0, len(out.Trailer))
			for k := range out.Trailer {
				keys = append(keys, k)
			}
			b = h1.AppendField(b, "Trailer", strings.Join(keys, ", "))
		}
	case out.Method == http.MethodPost || out.Method == http.MethodPut || out.Method == http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...)
	}
	return append(b, "\r\n"...)
}

func skipInRequest(k string) bool {
	switch k {
	case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// bodyWriter streams a request body to the upstream while the response
// is read.
type bodyWriter struct {
	cc      *clientConn
	chunked bool
	n       int64
	trailer http.Header
	err     atomic.Pointer[bodyError] // reading the client's body failed
	werr    error                     // writing to the upstream failed
	done    chan struct{}
}

func (w *bodyWriter) run(body io.Reader) {
	defer close(w.done)
	bp := h1.GetBuffer()
	defer h1.PutBuffer(bp)
	buf := *bp
	const room = 32 // chunk header and CRLF
	var sent int64
	for {
		n, rerr := body.Read(buf[16 : len(buf)-room])
		if n > 0 {
			var out []byte
			if w.chunked {
				hdr := h1.AppendChunkHeader(make([]byte, 0, 16), n)
				start := 16 - len(hdr)
				copy(buf[start:], hdr)
				out = append(buf[start:16+n], "\r\n"...)
			} else {
				out = buf[16 : 16+n]
			}
			sent += int64(n)
			if _, err := w.cc.c.Write(out); err != nil {
				w.werr = err
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Never end the upstream's copy of a broken body well framed.
			w.err.Store(&bodyError{rerr})
			w.cc.c.Close()
			return
		}
	}
	if !w.chunked {
		if sent != w.n {
			w.err.Store(&bodyError{io.ErrUnexpectedEOF})
			w.cc.c.Close()
		}
		return
	}
	end := h1.AppendLastChunk(buf[:0], w.trailer)
	if _, err := w.cc.c.Write(end); err != nil {
		w.werr = err
	}
}

// clientBody is a response body; at its end the connection goes back to
// the pool.
type clientBody struct {
	cc    *clientConn
	resp  *http.Response
	b     h1.Body
	wr    *bodyWriter
	close bool
	ended atomic.Bool
}

func (cb *clientBody) Read(p []byte) (int, error) {
	if cb.ended.Load() {
		return 0, io.EOF
	}
	n, err := cb.b.Read(p)
	if err == io.EOF {
		if len(cb.b.Trailer) > 0 {
			if cb.resp.Trailer == nil {
				cb.resp.Trailer = make(http.Header, len(cb.b.Trailer))
			}
			for k, vv := range cb.b.Trailer {
				cb.resp.Trailer[k] = vv
			}
		}
		cb.release(true)
		return n, io.EOF
	}
	if err != nil {
		cb.release(false)
		if h1.IsFraming(err) {
			err = &protocolError{err}
		}
	}
	return n, err
}

// Buffered reports how many bytes can be read without waiting: the
// relay flushes to the client when there are none.
func (cb *clientBody) Buffered() int {
	if cb.ended.Load() {
		return 0
	}
	return cb.cc.rd.Buffered()
}

// release ends the exchange: the connection is pooled when the response
// ended well, the request body went out whole and nothing cancelled it.
func (cb *clientBody) release(ok bool) {
	if cb.ended.Swap(true) {
		return
	}
	cc := cb.cc
	if !cc.unwatch() {
		ok = false // the context ended: the connection is closed
	}
	if cb.wr != nil {
		select {
		case <-cb.wr.done:
			if cb.wr.err.Load() != nil || cb.wr.werr != nil {
				ok = false
			}
		default:
			ok = false // the app answered before reading the whole body
		}
	}
	if ok && !cb.close && cb.b.Kind() != h1.UntilClose {
		cc.cl.put(cc)
		return
	}
	cc.c.Close()
	cc.rd.Release()
}

// Close ends the body early: what is already buffered of a short body is
// read so the connection can be reused; otherwise it is closed.
func (cb *clientBody) Close() error {
	if cb.ended.Load() {
		return nil
	}
	if cb.b.Kind() == h1.Length && int64(cb.cc.rd.Buffered()) >= cb.b.Remaining() {
		_, _ = io.Copy(io.Discard, &cb.b)
		cb.release(cb.b.Done())
		return nil
	}
	cb.release(false)
	return nil
}

// upgradeBody is the connection after a 101: raw bytes both ways.
type upgradeBody struct{ cc *clientConn }

func (u *upgradeBody) Read(p []byte) (int, error)  { return u.cc.rd.Read(p) }
func (u *upgradeBody) Write(p []byte) (int, error) { return u.cc.c.Write(p) }
func (u *upgradeBody) Close() error {
	err := u.cc.c.Close()
	return err
}
