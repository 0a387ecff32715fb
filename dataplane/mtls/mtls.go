// Package mtls secures the hop between agents with mutual TLS 1.3 and
// SPIFFE identities, at the two seams of the data path: the inbound
// listener (Inbound.Listener wraps the socket the HTTP server or TCP relay
// accepts on) and the upstream dialer (Dialer.Wrap wraps the dial of
// pooled connections). Nothing between them changes: a verified caller
// reaches the request path as identity.FromContext, and the app as a
// header (PeerHeader).
//
// Modes (wire.MTLSStrict, wire.MTLSPermissive): strict accepts TLS 1.3
// with a client certificate that chains to the trust bundle only;
// permissive looks at a connection's first byte, a TLS handshake record
// (0x16) going to TLS and anything else served as plain text, for
// migration. Certificates come from identity.Credentials on every
// handshake, so a rotated certificate is used by new connections while
// those up finish with theirs.
package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// ParseMode checks a mode name; empty is permissive.
func ParseMode(s string) (string, error) {
	switch s {
	case "", wire.MTLSPermissive:
		return wire.MTLSPermissive, nil
	case wire.MTLSStrict:
		return wire.MTLSStrict, nil
	}
	return "", fmt.Errorf("mtls mode %q: want %s or %s", s, wire.MTLSPermissive, wire.MTLSStrict)
}

// ALPN protocols.
const (
	ALPNH2    = "h2"
	ALPNHTTP1 = "http/1.1"
)

// HandshakeTimeout bounds the inbound side's first byte and handshake.
const HandshakeTimeout = 10 * time.Second

// Conn is an accepted connection after mTLS: the verified caller is Peer.
type Conn struct {
	*tls.Conn
	peer identity.ID
}

// Peer is the caller's verified identity.
func (c *Conn) Peer() identity.ID { return c.peer }

// PeerOf returns the verified identity of a connection Inbound accepted,
// and false for a plaintext one.
func PeerOf(c net.Conn) (identity.ID, bool) {
	if mc, ok := c.(*Conn); ok {
		return mc.peer, true
	}
	return identity.ID{}, false
}

// ConnContext returns ctx carrying the verified caller of c (see
// identity.NewContext), for a server's per-connection context.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if id, ok := PeerOf(c); ok {
		return identity.NewContext(ctx, id)
	}
	return ctx
}

// Inbound secures an agent's inbound listener.
type Inbound struct {
	// Creds is the agent's identity (its certificate, the trust bundle).
	Creds *identity.Credentials
	// Mode returns the inbound mode now (read per connection, so a pushed
	// change applies to new connections).
	Mode    func() string
	Metrics *Metrics
	Log     zerolog.Logger

	once              sync.Once
	strict, permissve *tls.Config
}

func (in *Inbound) configs() {
	in.once.Do(func() {
		protos := []string{ALPNH2, ALPNHTTP1, wire.ALPNMesh}
		in.strict = in.Creds.ServerConfig(true, nil)
		in.strict.NextProtos = protos
		in.permissve = in.Creds.ServerConfig(false, nil)
		in.permissve.NextProtos = protos
	})
}

// Listener wraps ln: Accept returns connections once their first byte
// and TLS handshake are done (each on its own goroutine, so a slow
// client holds up no other), as *Conn for mTLS and as they came, with the
// first byte replayed, for plaintext in permissive mode. Refused
// connections are closed and counted, never returned.
func (in *Inbound) Listener(ln net.Listener) net.Listener {
	in.configs()
	return &listener{Listener: ln, in: in, ready: make(chan net.Conn), errc: make(chan error, 1), done: make(chan struct{})}
}

type listener struct {
	net.Listener
	in    *Inbound
	start sync.Once
	ready chan net.Conn
	errc  chan error
	done  chan struct{}
	close sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// acceptLoop accepts raw connections and hands each to a goroutine for
// its handshake. Accept errors are passed on to the server (which retries
// temporary ones); a permanent one ends the loop.
func (l *listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errc <- err:
			case <-l.done:
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				continue
			}
			return
		}
		go l.handshake(c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (l *listener) handshake(c net.Conn) {
	out, err := l.in.secure(c)
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.ready <- out:
	case <-l.done:
		out.Close()
	}
}

// recordHandshake is the first byte of a TLS connection (a handshake
// record carrying the ClientHello).
const recordHandshake = 0x16

func (in *Inbound) secure(c net.Conn) (net.Conn, error) {
	mode := wire.MTLSPermissive
	if in.Mode != nil {
		mode = in.Mode()
	}
	_ = c.SetReadDeadline(time.Now().Add(HandshakeTimeout))
	var first [1]byte
	if _, err := c.Read(first[:]); err != nil {
		return nil, err // closed or silent before a byte: not a handshake
	}
	pc := &prefixConn{Conn: c, pre: first[:]}
	if first[0] != recordHandshake {
		if mode == wire.MTLSStrict {
			in.Metrics.refused(ReasonPlaintext)
			in.Log.Debug().Str("client", c.RemoteAddr().String()).Msg("plaintext connection refused (mtls strict)")
			return nil, errors.New("plaintext in strict mode")
		}
		_ = c.SetReadDeadline(time.Time{})
		in.Metrics.conn(TransportPlaintext)
		return pc, nil
	}
	cfg := in.permissve
	if mode == wire.MTLSStrict {
		cfg = in.strict
	}
	tc := tls.Server(pc, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	in.Metrics.handshake(SideServer, err)
	if err != nil {
		in.Log.Debug().Err(err).Str("client", c.RemoteAddr().String()).Str("reason", Reason(err)).Msg("mtls handshake refused")
		return nil, err
	}
	_ = c.SetReadDeadline(time.Time{})
	id, err := identity.PeerID(tc.ConnectionState())
	if err != nil {
		// Permissive: a TLS client that presented no certificate is
		// served as an unidentified caller.
		in.Metrics.conn(TransportMTLS)
		return tc, nil
	}
	in.Metrics.conn(TransportMTLS)
	return &Conn{Conn: tc, peer: id}, nil
}

// prefixConn replays the byte read to tell TLS from plain text.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite passes a half-close on (the TCP relay uses it).
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
