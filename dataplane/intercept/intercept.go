// Package intercept serves the agent's intercept listeners: the
// connections netfilter redirected to it (mesh redirect-traffic). For each
// one it recovers the original destination (SO_ORIGINAL_DST), asks the
// agent which mesh service that is (an endpoint's address or a service's
// virtual IP), tells the protocol from the first bytes (HTTP/1.1, the h2c
// preface, a TLS ClientHello and its SNI, else TCP) and hands the
// connection, its first bytes replayed, to the same servers as the
// explicit listeners: an HTTP server running the service's chain, or the
// service's TCP relay. A destination that is no mesh service is connected
// to unchanged (pass) or closed (block).
package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Route is the agent's answer for one original destination.
type Route struct {
	// Service is the mesh service; "" means none (Unknown applies).
	Service string
	// TCP says the service is raw TCP: no detection, straight to its
	// relay.
	TCP bool
}

// Kind is which of the agent's servers takes a connection.
type Kind uint8

// Kinds of backend.
const (
	KindHTTP Kind = iota // proxy.Server with the service's chain
	KindTCP              // tcpproxy.Relay of the service
)

// Backend serves the connections handed to it through a listener, like
// the explicit listeners' servers (proxy.Server, tcpproxy.Relay).
type Backend interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// Options configure a Server.
type Options struct {
	// Name is the listener's name in logs and metrics (e.g. "intercept
	// outbound").
	Name string
	// Route maps an original destination, and the TLS server name when
	// the client sent one, to a service.
	Route func(dst netip.AddrPort, sni string) Route
	// NewBackend builds the server of a service and kind, once; Server
	// starts and stops it.
	NewBackend func(service string, kind Kind) (Backend, error)
	// Block closes connections to unknown destinations instead of
	// connecting them there.
	Block bool
	// DetectTimeout bounds the wait for the client's first bytes.
	DetectTimeout time.Duration
	// Dialer connects passed-through connections (the agent's UID is
	// excluded from redirection, so they go where the client meant).
	Dialer *net.Dialer
	// Metrics counts connections; nil counts nothing.
	Metrics *Metrics
	Log     zerolog.Logger
}

// Server is one intercept listener's dispatcher.
type Server struct {
	o   Options
	log zerolog.Logger

	mu       sync.Mutex
	backends map[backendKey]*backend
	lns      []net.Listener
	closing  atomic.Bool
	conns    sync.WaitGroup        // connections being dispatched or passed through
	passing  map[net.Conn]struct{} // passed-through client connections
}

type backendKey struct {
	service string
	kind    Kind
}

type backend struct {
	b    Backend
	sink *sink
	done chan struct{}
}

// New returns a server; it starts nothing.
func New(o Options) *Server {
	if o.DetectTimeout <= 0 {
		o.DetectTimeout = 300 * time.Millisecond
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	}
	return &Server{o: o, log: o.Log.With().Str("component", "intercept").Str("listener", o.Name).Logger(),
		backends: map[backendKey]*backend{}, passing: map[net.Conn]struct{}{}}
}

// Serve accepts redirected connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	self, _ := netip.ParseAddrPort(ln.Addr().String())
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.handle(tc, self)
		}()
	}
}

// handle dispatches one connection.
func (s *Server) handle(c *net.TCPConn, self netip.AddrPort) {
	dst, err := OriginalDst(c)
	if err != nil {
		s.log.Debug().Err(err).Str("client", c.RemoteAddr().String()).Msg("closing a connection without an original destination")
		s.o.Metrics.count(s.o.Name, ResultError)
		c.Close()
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst.Port() == self.Port() && (dst.Addr() == self.Addr().Unmap() || self.Addr().IsUnspecified() || dst.Addr().IsLoopback()) {
		// Not redirected: someone connected to the intercept port itself.
		// Passing it on would connect it to itself.
		s.o.Metrics.count(s.o.Name, ResultError)
		c.Close()
		return
	}
	route := s.o.Route(dst, "")
	pc := &Conn{TCPConn: c, Dst: dst}
	if !route.TCP {
		pc.Protocol, pc.SNI = s.detect(pc)
		if route.Service == "" && pc.SNI != "" {
			route = s.o.Route(dst, pc.SNI)
		}
	}
	kind := KindHTTP
	switch {
	case route.Service == "":
	case route.TCP:
		kind = KindTCP
	case !pc.Protocol.IsHTTP():
		// Bytes the service's HTTP path cannot carry (TLS, other TCP to an
		// HTTP service): left alone.
		route.Service = ""
	}
	if route.Service == "" {
		s.unknown(pc)
		return
	}
	b, err := s.backend(route.Service, kind)
	if err != nil {
		s.log.Warn().Err(err).Str("service", route.Service).Msg("closing an intercepted connection: no server for its service")
		s.o.Metrics.count(s.o.Name, ResultError)
		c.Close()
		return
	}
	s.o.Metrics.count(s.o.Name, ResultService)
	if !b.sink.hand(pc) {
		c.Close()
	}
}

// detect reads the client's first bytes, within the detect timeout.
func (s *Server) detect(c *Conn) (Protocol, string) {
	buf := make([]byte, maxSniff)
	n := 0
	deadline := time.Now().Add(s.o.DetectTimeout)
	_ = c.TCPConn.SetReadDeadline(deadline)
	defer c.TCPConn.SetReadDeadline(time.Time{})
	for {
		k, err := c.TCPConn.Read(buf[n:])
		n += k
		p, sni, more := Detect(buf[:n])
		if !more || err != nil || n == len(buf) {
			c.pre = buf[:n]
			return p, sni
		}
	}
}

// unknown passes c on to its original destination, or closes it.
func (s *Server) unknown(c *Conn) {
	if s.o.Block {
		s.o.Metrics.count(s.o.Name, ResultBlocked)
		s.log.Debug().Str("dst", c.Dst.String()).Msg("blocked a connection to a destination outside the mesh")
		reset(c)
		return
	}
	s.o.Metrics.count(s.o.Name, ResultPassed)
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.passing[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.passing, c)
		s.mu.Unlock()
	}()
	up, err := s.o.Dialer.Dial("tcp", c.Dst.String())
	if err != nil {
		s.log.Debug().Err(err).Str("dst", c.Dst.String()).Msg("pass-through connect failed")
		reset(c)
		return
	}
	pipe(c, up.(*net.TCPConn))
}

// reset closes c with a RST rather than a FIN: the app's connect already
// succeeded (the agent accepted it), so the nearest it can see to the
// destination's refusal is "connection reset", never an orderly empty
// answer it could take for a response.
func reset(c *Conn) {
	_ = c.TCPConn.SetLinger(0)
	c.Close()
}

// pipe copies both ways, passing half-closes on, until both ended. A
// broken stream (a reset, a failed write) is passed on as a reset of both
// sides, never as an orderly end the other side could take for a complete
// answer.
func pipe(c *Conn, up *net.TCPConn) {
	done := make(chan struct{}, 2)
	abort := func() {
		_ = up.SetLinger(0)
		up.Close()
		reset(c)
	}
	go func() {
		_, err := io.Copy(up, c)
		if err == nil {
			_ = up.CloseWrite()
		} else {
			abort()
		}
		done <- struct{}{}
	}()
	go func() {
		_, err := io.Copy(c.TCPConn, up)
		if err == nil {
			_ = c.CloseWrite()
		} else {
			abort()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
	c.Close()
	up.Close()
}

// backend returns the running server of service and kind, starting it
// the first time.
func (s *Server) backend(service string, kind Kind) (*backend, error) {
	key := backendKey{service, kind}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.backends[key]; b != nil {
		return b, nil
	}
	if s.closing.Load() {
		return nil, errors.New("shutting down")
	}
	nb, err := s.o.NewBackend(service, kind)
	if err != nil {
		return nil, err
	}
	b := &backend{b: nb, sink: newSink(), done: make(chan struct{})}
	s.backends[key] = b
	go func() {
		defer close(b.done)
		if err := nb.Serve(b.sink); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug().Err(err).Str("service", service).Msg("intercept backend stopped")
		}
	}()
	return b, nil
}

// Shutdown stops accepting, then shuts every backend down within ctx;
// passed-through connections are closed at the end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for _, ln := range s.lns {
		ln.Close()
	}
	bs := make([]*backend, 0, len(s.backends))
	for _, b := range s.backends {
		bs = append(bs, b)
	}
	s.mu.Unlock()
	var firstErr error
	for _, b := range bs {
		b.sink.Close()
		if err := b.b.Shutdown(ctx); err != nil && firstErr == nil {
			firstErr = err
			_ = b.b.Close()
		}
	}
	s.mu.Lock()
	for c := range s.passing {
		c.Close()
	}
	s.mu.Unlock()
	waited := make(chan struct{})
	go func() { s.conns.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		if firstErr == nil {
			firstErr = ctx.Err()
		}
	}
	return firstErr
}

// Close stops everything at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
	return nil
}

// Conn is an intercepted connection: reads replay the bytes detection
// read first. It keeps *net.TCPConn's half-close (CloseWrite).
type Conn struct {
	*net.TCPConn
	pre []byte
	// Dst is the original destination.
	Dst netip.AddrPort
	// Protocol and SNI are what detection found.
	Protocol Protocol
	SNI      string
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.TCPConn.Read(p)
}

// WriteTo replays the first bytes, then lets the kernel move the rest.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(c.pre) > 0 {
		k, err := w.Write(c.pre)
		n += int64(k)
		c.pre = nil
		if err != nil {
			return n, err
		}
	}
	m, err := c.TCPConn.WriteTo(w)
	return n + m, err
}

// SyscallConn hides the descriptor while bytes read by detection are
// pending: a server reading the descriptor directly (proxy.Server waits on
// it without a buffer) would skip them.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if len(c.pre) > 0 {
		return nil, errReplayPending
	}
	return c.TCPConn.SyscallConn()
}

var errReplayPending = errors.New("intercept: replayed bytes pending; read through the connection")

// LocalAddr is the original destination, as the client sees it.
func (c *Conn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(c.Dst) }

// sink is a net.Listener fed by hand: how a connection reaches a backend.
type sink struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newSink() *sink { return &sink{ch: make(chan net.Conn), done: make(chan struct{})} }

func (l *sink) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *sink) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *sink) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *sink) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
