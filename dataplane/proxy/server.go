package proxy

import (
	"bytes"
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Server serves an http.Handler on the agent's listeners: HTTP/1.1 with
// the httpwire/h1 codec (one goroutine per connection, requests served on
// it in turn, strict RFC 9112 framing), and HTTP/2 with prior knowledge
// (h2c), detected on a connection's first bytes and handed to net/http's
// HTTP/2 server. It has header and idle timeouts but no read or write
// timeout: gRPC and SSE streams may last for hours.
type Server struct {
	handler       http.Handler
	log           zerolog.Logger
	headerTimeout time.Duration
	idleTimeout   time.Duration
	maxHeader     int

	// ConnContext, if set (before Serve), returns the context of a new
	// connection's requests from the connection Accept returned, as
	// net/http's Server.ConnContext does: the mTLS listener's verified
	// caller reaches the handlers this way (mtls.ConnContext).
	ConnContext func(ctx context.Context, c net.Conn) context.Context

	h2     *http.Server
	h2ln   *connListener
	h2once sync.Once
	h2done chan struct{}

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	closing   atomic.Bool
	// connDone is signalled when a connection ends (Shutdown waits).
	connDone chan struct{}
}

// Server limits.
const (
	serverHeaderTimeout = 10 * time.Second
	serverIdleTimeout   = 120 * time.Second
	serverMaxHeader     = 64 << 10
)

// NewServer returns a server for h that speaks HTTP/1.1 and HTTP/2 with
// prior knowledge (h2c) on the same port. It does not listen; the caller
// calls Serve and Shutdown.
func NewServer(h http.Handler, logger zerolog.Logger) *Server {
	lg := logger.With().Str("component", "http-server").Logger()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	s := &Server{
		handler:       h,
		log:           lg,
		headerTimeout: serverHeaderTimeout,
		idleTimeout:   serverIdleTimeout,
		maxHeader:     serverMaxHeader,
		h2ln:          newConnListener(),
		h2done:        make(chan struct{}),
		listeners:     map[net.Listener]struct{}{},
		conns:         map[*serverConn]struct{}{},
		connDone:      make(chan struct{}, 1),
	}
	s.h2 = &http.Server{
		Handler:           h2Drain{h},
		Protocols:         &p,
		ReadHeaderTimeout: serverHeaderTimeout,
		IdleTimeout:       serverIdleTimeout,
		MaxHeaderBytes:    serverMaxHeader,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          15 * time.Second,
		},
		ErrorLog: log.New(serverLogWriter{lg}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*prefixConn); ok {
				c = pc.Conn // the accepted connection, as HTTP/1.1 sees it
			}
			if s.ConnContext != nil {
				return s.ConnContext(ctx, c)
			}
			return ctx
		},
	}
	return s
}

// Serve accepts connections on ln until Shutdown or Close, and returns
// http.ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	s.h2once.Do(func() {
		go func() {
			defer close(s.h2done)
			_ = s.h2.Serve(s.h2ln)
		}()
	})
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Dur("retry_in", delay).Msg("accept failed")
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := s.newConn(nc)
		if c == nil {
			nc.Close()
			return http.ErrServerClosed
		}
		go c.serve()
	}
}

func (s *Server) newConn(nc net.Conn) *serverConn {
	c := &serverConn{s: s, c: nc}
	c.rd.Reset(nc)
	// Only a conn whose bytes are the descriptor's (plain TCP) may be read
	// through it: a wrapper that decrypts or buffers (TLS, a peeked
	// prefix) must not expose SyscallConn.
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.raw = rc
		}
	}
	ctx := context.Background()
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, nc)
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.state.Store(stateIdle)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return nil
	}
	s.conns[c] = struct{}{}
	return c
}

func (s *Server) forget(c *serverConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	select {
	case s.connDone <- struct{}{}:
	default:
	}
}

// Shutdown stops accepting, closes idle connections, and waits for the
// others to finish their request (HTTP/1.1) or streams (h2c) until ctx
// ends; then it returns ctx's error and the caller may Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopListening()
	h2err := make(chan error, 1)
	go func() { h2err <- s.h2.Shutdown(ctx) }()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.closeIdle() {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.connDone:
		case <-t.C:
		}
	}
	return <-h2err
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.stopListening()
	err := s.h2.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.state.Store(stateClosed)
		c.c.Close()
	}
	s.mu.Unlock()
	return err
}

func (s *Server) stopListening() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	s.h2ln.Close()
}

// closeIdle closes connections waiting for a request and reports whether
// none is left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			c.c.Close()
		}
	}
	return len(s.conns) == 0
}

// Connection states.
const (
	stateIdle int32 = iota
	stateActive
	stateClosed
)

// serverLogWriter sends net/http's own complaints (bad clients, aborted
// handshakes) to zerolog at debug level: they are about clients, not us.
// Handler panics are errors.
type serverLogWriter struct{ log zerolog.Logger }

func (w serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "panic") {
		w.log.Error().Msg(msg)
	} else {
		w.log.Debug().Msg(msg)
	}
	return len(p), nil
}

// connListener hands connections the HTTP/1.1 server detected as h2c to
// net/http's HTTP/2 server.
type connListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// hand passes c on; false when the listener is closed.
func (l *connListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// prefixConn replays bytes already read from a connection.
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

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// isH2Preface reports whether b starts the HTTP/2 preface; more says that
// b is a proper prefix of it, so more bytes decide.
func isH2Preface(b []byte) (yes, more bool) {
	n := min(len(b), len(h2Preface))
	if !bytes.Equal(b[:n], h2Preface[:n]) {
		return false, false
	}
	return n == len(h2Preface), n < len(h2Preface)
}
