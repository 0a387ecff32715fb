// Package proxy is the agent's data path for one request: it forwards an
// HTTP request (HTTP/1.1, h2c, gRPC, WebSocket and other upgrades) to one
// upstream address and streams the response back, handling hop-by-hop and
// forwarding headers. It also renders the mesh's own error responses and
// builds the agent's HTTP/1.1+h2c servers. Choosing the address is the
// job of package chain.
package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/httpwire/h1"
)

// Options tune a Forwarder. The zero value is usable.
type Options struct {
	Log zerolog.Logger
	// ConnectTimeout bounds dialing an upstream (default 1s).
	ConnectTimeout time.Duration
	// MaxIdlePerHost is the number of pooled keep-alive HTTP/1.1
	// connections per upstream address (default 1024). net/http's default
	// of 2 cuts throughput by more than half under concurrency.
	MaxIdlePerHost int
	// IdleConnTimeout closes pooled connections unused this long
	// (default 90s).
	IdleConnTimeout time.Duration
	// WrapDial, if set, wraps the dialer of upstream connections, e.g. to
	// count them (observability.Metrics.Dialer). The dial's context
	// carries the values of the request that asked for the connection.
	WrapDial func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Forwarder sends requests to upstream addresses over pooled connections:
// HTTP/1.1 requests over HTTP/1.1, HTTP/2 requests over h2c with prior
// knowledge. It is safe for concurrent use.
type Forwarder struct {
	log zerolog.Logger
	h1  *h1Client
	h2c *http.Transport
	// Copy buffers: small responses (the common case) hold a small buffer
	// while in flight, so thousands of concurrent requests stay cheap;
	// large and streamed bodies get a large one to move more bytes per
	// system call.
	smallBufs, largeBufs sync.Pool
	// apps: what the agent's own app speaks, by address (SetAppProtocol).
	apps sync.Map
}

// connectError marks a failure to dial the upstream: the request never
// left the agent.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// NewForwarder builds a Forwarder; it opens no connection.
func NewForwarder(o Options) *Forwarder {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = time.Second
	}
	if o.MaxIdlePerHost <= 0 {
		o.MaxIdlePerHost = 1024
	}
	if o.IdleConnTimeout <= 0 {
		o.IdleConnTimeout = 90 * time.Second
	}
	d := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	dialer := d.DialContext
	if o.WrapDial != nil {
		dialer = o.WrapDial(dialer)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer(ctx, network, addr)
		if err != nil {
			return nil, &connectError{err: err}
		}
		return c, nil
	}
	newTransport := func(p *http.Protocols) *http.Transport {
		return &http.Transport{
			Proxy: nil, // never HTTP_PROXY: we are the proxy
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dial(context.WithValue(ctx, dialProtoKey{}, "h2"), network, addr)
			},
			MaxIdleConns:        0, // no global limit
			MaxIdleConnsPerHost: o.MaxIdlePerHost,
			IdleConnTimeout:     o.IdleConnTimeout,
			DisableCompression:  true, // pass Accept-Encoding and bodies unchanged
			Protocols:           p,
			HTTP2: &http.HTTP2Config{
				SendPingTimeout: 15 * time.Second,
				PingTimeout:     15 * time.Second,
			},
		}
	}
	var p2 http.Protocols
	p2.SetUnencryptedHTTP2(true)
	return &Forwarder{
		log: o.Log.With().Str("component", "proxy").Logger(),
		h1: newH1Client(func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dial(context.WithValue(ctx, dialProtoKey{}, "http/1.1"), network, addr)
		}, o.MaxIdlePerHost, o.IdleConnTimeout),
		h2c:       newTransport(&p2),
		smallBufs: sync.Pool{New: func() any { b := make([]byte, smallBody); return &b }},
		largeBufs: sync.Pool{New: func() any { b := make([]byte, largeBody); return &b }},
	}
}

type dialProtoKey struct{}

// DialProtocol is, in the context of a dial the Forwarder makes (see
// Options.WrapDial), the application protocol of the pool dialing, as an
// ALPN name: "h2" for the h2c pool, "http/1.1" for the HTTP/1.1 one. An
// mTLS dialer offers it so that the hop's protocol is negotiated as the
// plaintext hop chooses it.
func DialProtocol(ctx context.Context) string {
	p, _ := ctx.Value(dialProtoKey{}).(string)
	return p
}

// CloseIdleConnections closes pooled connections that carry no request.
func (f *Forwarder) CloseIdleConnections() {
	f.h1.closeIdle()
	f.h2c.CloseIdleConnections()
}

// Sizes of the copy buffers.
const (
	smallBody = 4 << 10
	largeBody = 32 << 10
)

// noCloseBody keeps the transport from closing the client's request body,
// so that a request whose upstream could not be dialed can be sent to
// another one. The server closes the body when the handler returns.
type noCloseBody struct{ io.Reader }

func (noCloseBody) Close() error { return nil }

// Forward sends r to addr (host:port) and streams the response back to w.
// It returns a non-nil *Error only when nothing has been written to w, so
// the caller may retry (see Retryable) or render it with WriteError.
// Failures after the response started abort the client connection (HTTP/1)
// or reset the stream (HTTP/2), by panicking with http.ErrAbortHandler as
// net/http expects; middleware that recovers panics must re-panic it.
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, addr string) error {
	resp, err := f.Send(w, r, addr, nil)
	if err != nil {
		return err
	}
	if err := f.Relay(w, r, resp); err != nil {
		if err == ErrAborted {
			panic(http.ErrAbortHandler)
		}
		return err
	}
	return nil
}

// Attempt tunes one Send: one try of a request, as a retrying caller
// makes it. The zero value (or nil) sends r as Forward does.
type Attempt struct {
	// Ctx, if set, is the context of the upstream request instead of
	// r's: it carries the route and per-try timeouts. It must stay live
	// until Relay returns, since it also bounds the response body.
	Ctx context.Context
	// Body, if set, replaces r.Body for this try: a retry replays the
	// body the first try consumed. r.ContentLength still applies.
	Body io.Reader
	// Protocol is what the target's app speaks (the endpoint's registered
	// app protocol); Unknown sends r in its own protocol.
	Protocol endpoint.Protocol
}

// ErrAborted is what Relay returns when the upstream's response broke off
// after it had started to reach the client: the client's connection (or
// stream) must be aborted by panicking with http.ErrAbortHandler, once
// the caller has recorded the failure.
var ErrAborted = errors.New("upstream response aborted")

// Send sends r to addr (host:port) and returns the upstream's response
// with its body unread; nothing is written to w (only its full-duplex mode
// is set). The caller inspects the status and headers, then either writes
// the response with Relay or drops it with Discard, so that a response a
// retry policy rejects never reaches the client. Errors are *Error, as in
// Forward.
func (f *Forwarder) Send(w http.ResponseWriter, r *http.Request, addr string, a *Attempt) (*http.Response, error) {
	if r.Method == http.MethodConnect {
		// Tunnels (HTTPS_PROXY) would bypass every mesh policy; the mesh
		// carries plain HTTP between apps and their agents.
		return nil, &Error{Status: http.StatusMethodNotAllowed, Reason: ReasonConnectNotSupported}
	}
	ctx := r.Context()
	var body io.Reader = r.Body
	var proto endpoint.Protocol
	if a != nil {
		if a.Ctx != nil {
			ctx = a.Ctx
		}
		if a.Body != nil {
			body = a.Body
		}
		proto = a.Protocol
	} else {
		proto = f.AppProtocol(addr)
	}
	upgrade := ""
	if r.ProtoMajor < 2 {
		upgrade = upgradeType(r.Header)
	}
	useH2, perr := f.transport(r, proto, upgrade)
	if perr != nil {
		return nil, perr
	}

	out := r.WithContext(ctx) // shallow copy; every shared field is replaced below
	out.URL = &url.URL{Scheme: "http", Host: addr, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	out.RequestURI = ""
	out.Close = false
	out.Header = requestHeader(r, upgrade)
	out.Trailer = r.Trailer
	if r.ContentLength == 0 || body == nil {
		out.Body = nil
	} else {
		out.Body = noCloseBody{body}
	}
	if !useH2 {
		// HTTP/1.x: our own client. (The agent's HTTP/1.1 server reads
		// request bodies while the response is written.)
		var b io.Reader
		if out.Body != nil {
			b = out.Body
		}
		resp, err := f.h1.roundTrip(ctx, out, b)
		if err != nil {
			return nil, classify(ctx, err)
		}
		return resp, nil
	}
	if out.Body != nil && r.ContentLength > 0 {
		// A declared length ends the body where it says: the h2 transport
		// holds the last DATA frame back until the body reports its end
		// (to set END_STREAM on it), which a client that keeps its stream
		// open after the declared bytes (a full-duplex call) would delay
		// for as long as the stream lasts.
		out.Body = noCloseBody{io.LimitReader(body, r.ContentLength)}
	}
	resp, err := f.h2c.RoundTrip(out)
	if err != nil {
		return nil, classify(ctx, err)
	}
	return resp, nil
}

// Discard drops a response from Send without relaying it. A short body is
// read to its end first so that the connection can carry another request.
func Discard(resp *http.Response) {
	if resp.ContentLength >= 0 && resp.ContentLength <= smallBody {
		_, _ = io.CopyN(io.Discard, resp.Body, smallBody+1)
	}
	resp.Body.Close()
}

// Relay writes resp, a response from Send for r, to w and streams its body
// (or, after a 101, relays the upgraded connection both ways); it closes
// resp.Body. It returns a *Error only when nothing has been written to w,
// and ErrAborted when the upstream broke off mid-response (see
// ErrAborted). A client that went away is not an error. Once Relay has
// returned, resp.Trailer holds the upstream's trailers.
func (f *Forwarder) Relay(w http.ResponseWriter, r *http.Request, resp *http.Response) error {
	defer resp.Body.Close()
	addr := ""
	if resp.Request != nil && resp.Request.URL != nil {
		addr = resp.Request.URL.Host
	}

	if resp.StatusCode == http.StatusSwitchingProtocols {
		upgrade := ""
		if r.ProtoMajor < 2 {
			upgrade = upgradeType(r.Header)
		}
		return f.switchProtocols(w, r, resp, upgrade)
	}

	h := w.Header()
	copyResponseHeader(h, resp.Header)
	if _, ok := resp.Header["Content-Type"]; !ok {
		h["Content-Type"] = nil // no content sniffing: pass the response as it is
	}
	if len(resp.Trailer) > 0 {
		announceTrailers(h, resp.Trailer)
	}
	if resp.ContentLength < 0 && r.ProtoMajor == 1 && resp.ProtoMajor == 1 && r.ProtoMinor == 1 {
		h["Transfer-Encoding"] = valChunked // a stream stays a stream (see Server)
	}
	w.WriteHeader(resp.StatusCode)

	// Stream the body as it arrives, whatever its framing: after a read
	// that leaves the body unfinished and nothing more already received,
	// what was written is flushed, so a slow response (a drip, SSE, a
	// progress stream, gRPC) reaches the client at once while a small one
	// goes out in one write when the handler returns.
	fl := flusherOf(w)
	buffered, _ := resp.Body.(interface{ Buffered() int })
	if fl != nil && resp.ContentLength != 0 {
		if buffered != nil && buffered.Buffered() == 0 || buffered == nil && resp.ContentLength < 0 {
			fl.Flush() // headers now: the first bytes may take a while
		}
	}
	pool := &f.largeBufs
	if resp.ContentLength >= 0 && resp.ContentLength <= smallBody {
		pool = &f.smallBufs
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				// The client went away; closing resp.Body cancels upstream.
				f.log.Debug().Err(werr).Str("upstream", addr).Msg("client write failed")
				return nil
			}
			if rerr == nil && fl != nil && (buffered == nil || buffered.Buffered() == 0) {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.log.Debug().Err(rerr).Str("upstream", addr).Msg("upstream response aborted")
			return ErrAborted
		}
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	return nil
}

// announceTrailers lists the upstream's declared trailers in the Trailer
// header so that HTTP/1.1 clients learn of them before the body.
func announceTrailers(h http.Header, tr http.Header) {
	keys := make([]string, 0, len(tr))
	for k := range tr {
		keys = append(keys, k)
	}
	h["Trailer"] = keys
}

// classify turns a RoundTrip failure into the mesh's answer.
func classify(ctx context.Context, err error) *Error {
	var ce *connectError
	var be *bodyError
	var pe *protocolError
	switch {
	case errors.As(err, &be):
		if h1.IsFraming(be.err) {
			return &Error{Status: http.StatusBadRequest, Reason: ReasonBadRequest, Err: err}
		}
		return &Error{Status: StatusClientClosedRequest, Reason: ReasonClientCancelled, Err: err}
	case errors.As(err, &pe):
		return &Error{Status: http.StatusBadGateway, Reason: ReasonProtocolError, Err: err}
	case errors.As(err, &ce):
		if ctx.Err() == context.DeadlineExceeded {
			return &Error{Status: http.StatusGatewayTimeout, Reason: ReasonTimeout, Err: err}
		}
		if ctx.Err() != nil {
			return &Error{Status: StatusClientClosedRequest, Reason: ReasonClientCancelled, Err: err}
		}
		return &Error{Status: http.StatusServiceUnavailable, Reason: ReasonConnectFailure, Err: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Reason: ReasonTimeout, Err: err}
	case ctx.Err() != nil:
		return &Error{Status: StatusClientClosedRequest, Reason: ReasonClientCancelled, Err: err}
	default:
		return &Error{Status: http.StatusBadGateway, Reason: ReasonReset, Err: err}
	}
}

// flusherOf finds the http.Flusher of w or of a writer it wraps.
func flusherOf(w http.ResponseWriter) http.Flusher {
	for range 8 {
		if fl, ok := w.(http.Flusher); ok {
			return fl
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}
