package gateway

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/observability"
)

// listener is one bound socket and the server on it.
type listener struct {
	name  string
	ln    net.Listener
	srv   *http.Server
	serve func() error
}

// bind opens the HTTPS listener first (it is what Consul registers), then
// HTTP (if configured) and admin. Client connections on HTTPS and HTTP
// count against limits.max_connections together.
func (g *Gateway) bind() ([]*listener, error) {
	gc := g.cfg.Gateway
	lim := gc.Limits
	var lns []*listener
	fail := func(err error) ([]*listener, error) {
		closeAll(lns)
		return nil, err
	}
	var slots chan struct{}
	if lim.MaxConnections > 0 {
		slots = make(chan struct{}, lim.MaxConnections)
	}
	limit := func(ln net.Listener) net.Listener {
		if slots == nil {
			return ln
		}
		return newSharedLimit(ln, slots)
	}
	errLog := log.New(serverLogWriter{g.base.With().Str("component", "http-server").Logger()}, "", 0)
	edge := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: lim.ReadHeaderTimeout,
			IdleTimeout:       lim.IdleTimeout,
			MaxHeaderBytes:    lim.MaxHeaderBytes,
			HTTP2: &http.HTTP2Config{
				MaxConcurrentStreams:      250,
				MaxReceiveBufferPerStream: 1 << 20,
				SendPingTimeout:           30 * time.Second,
				PingTimeout:               15 * time.Second,
			},
			ErrorLog: errLog,
		}
	}

	ln, err := net.Listen("tcp", gc.HTTPSAddr)
	if err != nil {
		return fail(fmt.Errorf("listen https on %s: %w", gc.HTTPSAddr, err))
	}
	https := edge(g.obs.Instrument(observability.Inbound, gc.Name, http.HandlerFunc(g.serveHTTPS)))
	https.TLSConfig = g.tlsConf.cfg
	lln := limit(ln)
	lns = append(lns, &listener{name: "https", ln: ln, srv: https, serve: func() error { return https.ServeTLS(lln, "", "") }})

	if gc.HTTPAddr != "" {
		ln, err := net.Listen("tcp", gc.HTTPAddr)
		if err != nil {
			return fail(fmt.Errorf("listen http on %s: %w", gc.HTTPAddr, err))
		}
		h := g.certs.HTTPHandler(g.obs.Instrument(observability.Inbound, gc.Name, http.HandlerFunc(g.serveHTTP)))
		srv := edge(h)
		lln := limit(ln)
		lns = append(lns, &listener{name: "http", ln: ln, srv: srv, serve: func() error { return srv.Serve(lln) }})
	}

	ln, err = net.Listen("tcp", gc.AdminAddr)
	if err != nil {
		return fail(fmt.Errorf("listen admin on %s: %w", gc.AdminAddr, err))
	}
	admin := &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	lns = append(lns, &listener{name: "admin", ln: ln, srv: admin, serve: func() error { return admin.Serve(ln) }})
	for _, l := range lns {
		g.addrs.Store(l.name, l.ln.Addr().String())
	}
	return lns, nil
}

func closeAll(lns []*listener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

// sharedLimit bounds the connections open across listeners: Accept waits
// for a slot (the kernel's backlog holds new connections meanwhile), and
// closing a connection frees its slot.
type sharedLimit struct {
	net.Listener
	slots     chan struct{}
	closeOnce sync.Once
	closed    chan struct{}
}

func newSharedLimit(ln net.Listener, slots chan struct{}) *sharedLimit {
	return &sharedLimit{Listener: ln, slots: slots, closed: make(chan struct{})}
}

func (l *sharedLimit) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, slots: l.slots}, nil
}

func (l *sharedLimit) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}

// serverLogWriter sends net/http's server log (TLS handshake errors,
// mostly: clients cause them) to the debug log.
type serverLogWriter struct{ log zerolog.Logger }

func (w serverLogWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
