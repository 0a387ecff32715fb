package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/meshvm/mesh/dataplane/endpoint"
)

// Reasons for requests the target's protocol cannot carry.
const (
	// ReasonProtocolMismatch: the request cannot be carried by what the
	// target speaks (gRPC to an HTTP/1.1-only app, HTTP to a TCP service).
	ReasonProtocolMismatch = "protocol-mismatch"
)

// SetAppProtocol records what the app at addr (host:port) speaks, for
// requests sent there without an Attempt (the inbound listener's Forward
// to its app). Unknown forgets it: requests then go out in the protocol
// they came in.
func (f *Forwarder) SetAppProtocol(addr string, p endpoint.Protocol) {
	if p == endpoint.Unknown {
		f.apps.Delete(addr)
		return
	}
	f.apps.Store(addr, p)
}

// AppProtocol returns what SetAppProtocol recorded for addr.
func (f *Forwarder) AppProtocol(addr string) endpoint.Protocol {
	if v, ok := f.apps.Load(addr); ok {
		return v.(endpoint.Protocol)
	}
	return endpoint.Unknown
}

// transport picks the connection pool for r (h2: h2c with prior
// knowledge, else HTTP/1.1) to a target speaking p, or
// refuses a request p cannot carry. upgrade is r's HTTP/1.1 upgrade, if
// any. Unknown keeps the request's own protocol. HTTP/2 requests to an
// HTTP/1.1 app go out as HTTP/1.1 (gRPC cannot: it needs HTTP/2 framing
// and trailers) and HTTP/1.1 requests to an HTTP/2 app as h2c, except
// upgrades, which HTTP/2 cannot carry as HTTP/1.1 does.
func (f *Forwarder) transport(r *http.Request, p endpoint.Protocol, upgrade string) (h2 bool, _ *Error) {
	switch p {
	case endpoint.HTTP1:
		if isGRPC(r) {
			return false, &Error{Status: http.StatusBadGateway, Reason: ReasonProtocolMismatch,
				Message: "the app speaks HTTP/1.1 only and cannot carry gRPC"}
		}
		return false, nil
	case endpoint.HTTP2, endpoint.GRPC:
		return upgrade == "", nil
	case endpoint.TCP:
		return false, &Error{Status: http.StatusBadGateway, Reason: ReasonProtocolMismatch,
			Message: "the service speaks raw TCP: call it through an upstream listener with protocol tcp"}
	}
	return r.ProtoMajor >= 2, nil
}

// h2ClientPreface is the client connection preface of HTTP/2 (RFC 9113 §3.4)
// followed by an empty SETTINGS frame.
const h2ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// ProbeProtocol asks the app at addr whether it speaks HTTP/2 with prior
// knowledge (h2c): it sends the HTTP/2 preface and reads the first bytes
// back. A SETTINGS frame means HTTP2; anything else (an HTTP/1.1 400, a
// closed connection) means HTTP1. An app that cannot be reached is an
// error: the answer is not known yet. Apps on the agent's side are plain
// text; ALPN would only apply to a TLS app.
func ProbeProtocol(ctx context.Context, addr string) (endpoint.Protocol, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return endpoint.Unknown, fmt.Errorf("probe the app's protocol at %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, h2ClientPreface); err != nil {
		return endpoint.HTTP1, nil // it hung up on the preface
	}
	hdr := make([]byte, 9)
	if _, err := io.ReadFull(bufio.NewReader(c), hdr); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// Silent: an HTTP/1.1 server waiting for the end of a request
			// line it cannot parse. Not HTTP/2, which answers at once.
			return endpoint.HTTP1, nil
		}
		return endpoint.HTTP1, nil
	}
	const frameSettings = 0x4
	if hdr[3] == frameSettings && hdr[4]&0x1 == 0 {
		return endpoint.HTTP2, nil
	}
	return endpoint.HTTP1, nil
}
