// Package tcpproxy is the agent's raw TCP data path: a Relay accepts
// connections on a listener and joins each one to one endpoint of a
// service (a callee agent's inbound listener, or the local app), copying
// bytes both ways until either side closes or the connection has been idle
// too long. Endpoints are picked per connection by the service's load
// balancer; an endpoint that cannot be connected to is reported to outlier
// detection and the next one is tried. Between two *net.TCPConn the
// copies use splice(2) where the kernel allows (Go's TCPConn.ReadFrom).
package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/governance/balancer"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// DefaultIdleTimeout closes a connection that carried no byte either way
// this long (Envoy's tcp_proxy default).
const DefaultIdleTimeout = time.Hour

// resolveTimeout bounds the wait for a service's endpoints when a
// connection arrives before discovery answered.
const resolveTimeout = 5 * time.Second

// maxConnectAttempts bounds the endpoints tried for one connection: a
// connect failure is safe to retry, nothing has been sent yet.
const maxConnectAttempts = 3

// Reasons a connection is refused or ended by the mesh (the access log's
// reason).
const (
	ReasonConnectFailure    = "upstream-connect-failure"
	ReasonNoHealthyEndpoint = "no-healthy-endpoint"
	ReasonNoRoute           = "no-route"
	ReasonIdleTimeout       = "idle-timeout"
	ReasonShutdown          = "shutdown"
	// ReasonRBACDenied: the L4 authorization refused the caller.
	ReasonRBACDenied = wire.ReasonRBACDenied
)

// Options configure a Relay.
type Options struct {
	// Direction is observability.Inbound or observability.Outbound.
	Direction string
	// LocalService is the agent's own service; Service the one the
	// connections go to.
	LocalService, Service string
	// Endpoints returns the service's endpoints now and its policy
	// (connect_timeout, load_balancer, outlier_detection apply). It is
	// called once per connection; a slice that did not change must be the
	// same shared slice (resolvers and tables do so).
	Endpoints func(ctx context.Context) ([]endpoint.Endpoint, config.Policy, error)
	// IdleTimeout closes connections idle both ways this long (default
	// DefaultIdleTimeout).
	IdleTimeout time.Duration
	// Log is the process logger (component=tcpproxy is added).
	Log zerolog.Logger
	// Observe, if set, is called once per connection when it ends (the
	// access log line).
	Observe func(observability.TCPConn)
	// Metrics, if set, counts connections and bytes.
	Metrics *Metrics
	// Limits, if set, returns the limits in force now (an inbound relay:
	// the service's rate limit and max_requests, per connection); it is
	// called once per connection.
	Limits func() Limits
	// WrapDial, if set, wraps the dialer of upstream connections (mTLS to
	// the peer agent: mtls.Dialer.Wrap). Without it, both sides of a
	// relay are TCP connections and bytes move by splice(2).
	WrapDial func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error)
	// Authorize, if set, decides on each connection before anything is
	// dialed (the inbound side's L4 authorization); a refused connection
	// is closed with reason rbac-denied.
	Authorize func(client net.Conn) Authorization
}

// Authorization is Authorize's decision on one connection, and what the
// access log records of it.
type Authorization struct {
	Allowed bool
	// PeerIdentity is the caller's verified SPIFFE ID ("" for none), Rule
	// the rule that decided ("" when no authorization applies).
	PeerIdentity, Rule string
}

// Relay serves one TCP listener. Serve runs it; Shutdown stops it.
type Relay struct {
	o   Options
	log zerolog.Logger
	m   *ServiceMetrics

	mu       sync.Mutex
	set      *endpointSet
	hosts    map[string]*outlier.Host // outlier state by address, across sets
	detector *outlier.Detector
	lim      *limiter

	connsMu sync.Mutex
	conns   map[*conn]struct{}
	lns     []net.Listener
	closing atomic.Bool
	wg      sync.WaitGroup
	stop    context.CancelFunc
	ctx     context.Context
}

// New builds a relay; it opens nothing.
func New(o Options) (*Relay, error) {
	if o.Endpoints == nil {
		return nil, errors.New("tcp relay: no endpoint source")
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	d, err := outlier.New(outlier.Config{}, nil)
	if err != nil {
		return nil, fmt.Errorf("tcp relay for %s: %w", o.Service, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		o:        o,
		log:      o.Log.With().Str("component", "tcpproxy").Str("direction", o.Direction).Str("service", o.Service).Logger(),
		hosts:    map[string]*outlier.Host{},
		detector: d,
		lim:      newLimiter(),
		conns:    map[*conn]struct{}{},
		ctx:      ctx,
		stop:     cancel,
	}
	if o.Metrics != nil {
		r.m = o.Metrics.Service(o.Direction, o.Service)
	}
	return r, nil
}

// endpointSet is one answer of Options.Endpoints, ready to pick from.
type endpointSet struct {
	eps    []endpoint.Endpoint
	pol    config.Policy
	hosts  []*outlier.Host
	picker *balancer.Picker
}

// Serve accepts connections on ln until Shutdown; it returns nil after a
// Shutdown and the accept error otherwise.
func (r *Relay) Serve(ln net.Listener) error {
	r.connsMu.Lock()
	if r.closing.Load() {
		r.connsMu.Unlock()
		return nil
	}
	r.lns = append(r.lns, ln)
	r.connsMu.Unlock()
	go r.detector.Run(r.ctx)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if r.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				r.log.Warn().Err(err).Dur("retry_in", delay).Msg("accept failed")
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		cc := &conn{client: c, start: time.Now()}
		r.connsMu.Lock()
		if r.closing.Load() {
			r.connsMu.Unlock()
			c.Close()
			continue
		}
		r.conns[cc] = struct{}{}
		r.wg.Add(1)
		r.connsMu.Unlock()
		go r.handle(cc)
	}
}

// Shutdown stops accepting, lets open connections run until ctx is done,
// then closes them. It returns ctx's error if it had to cut any.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.connsMu.Lock()
	r.closing.Store(true)
	for _, ln := range r.lns {
		ln.Close()
	}
	r.connsMu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	defer r.stop()
	// Connections quiet for shutdownIdle are closed as they become so, as
	// an HTTP server closes idle keep-alive connections: a pooled client
	// connection would otherwise hold the agent for the whole timeout.
	// The copy loops judge quietness; an expired read deadline, set on
	// every tick, wakes them to look.
	tick := time.NewTicker(shutdownIdle / 4)
	defer tick.Stop()
wait:
	for {
		r.pokeConns(time.Now())
		select {
		case <-done:
			return nil
		case <-tick.C:
		case <-ctx.Done():
			break wait
		}
	}
	// The deadline: cut every connection, including those still
	// connecting (their dial is cancelled; a relay that starts anyway
	// finds its client closed).
	r.stop()
	r.connsMu.Lock()
	for c := range r.conns {
		c.setReason(ReasonShutdown)
		c.client.Close()
		if up := c.upConn(); up != nil {
			up.Close()
		}
	}
	r.connsMu.Unlock()
	<-done
	return ctx.Err()
}

// shutdownIdle is how long a connection must have been quiet to be closed
// at once by Shutdown.
const shutdownIdle = time.Second

// pokeConns sets the read deadline of every relayed connection's two
// sockets to t.
func (r *Relay) pokeConns(t time.Time) {
	r.connsMu.Lock()
	defer r.connsMu.Unlock()
	for c := range r.conns {
		if up := c.upConn(); up != nil {
			_ = c.client.SetReadDeadline(t)
			_ = up.SetReadDeadline(t)
		}
	}
}

// endpoints returns the set to pick from, rebuilt only when the source's
// answer changed.
func (r *Relay) endpoints(ctx context.Context) (*endpointSet, error) {
	eps, pol, err := r.o.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.set; cur != nil && sameSlice(cur.eps, eps) && samePolicy(cur.pol, pol) {
		return cur, nil
	}
	lbp, err := balancer.ParsePolicy(pol.LoadBalancer.Policy)
	if err != nil {
		return nil, err
	}
	od := pol.OutlierDetection
	if err := r.detector.Update(outlier.Config{
		Consecutive5xx: od.Consecutive5xx, ConsecutiveGatewayFailure: od.ConsecutiveGatewayFailure,
		Interval: od.Interval, BaseEjectionTime: od.BaseEjectionTime, MaxEjectionPercent: od.MaxEjectionPercent,
	}); err != nil {
		return nil, err
	}
	set := &endpointSet{eps: eps, pol: pol, hosts: make([]*outlier.Host, len(eps))}
	bes := make([]balancer.Endpoint, len(eps))
	next := make(map[string]*outlier.Host, len(eps))
	for i, ep := range eps {
		h := r.hosts[ep.Addr]
		if h == nil {
			h = &outlier.Host{}
		}
		next[ep.Addr] = h
		set.hosts[i] = h
		bes[i] = balancer.Endpoint{Zone: ep.Zone, Health: h}
	}
	r.hosts = next
	r.detector.SetHosts(set.hosts)
	set.picker, err = balancer.New(bes, balancer.Options{Policy: lbp, Version: r.detector})
	if err != nil {
		return nil, err
	}
	r.set = set
	return set, nil
}

func sameSlice(a, b []endpoint.Endpoint) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

func samePolicy(a, b config.Policy) bool {
	return a.ConnectTimeout == b.ConnectTimeout && a.LoadBalancer == b.LoadBalancer &&
		reflect.DeepEqual(a.OutlierDetection, b.OutlierDetection)
}

// conn is one relayed connection.
type conn struct {
	client net.Conn
	up     net.Conn // set by connect before last is first stored
	start  time.Time
	// last activity either way (unix nanos), for the idle timeout.
	last   atomic.Int64
	in     atomic.Int64 // bytes from the client
	out    atomic.Int64 // bytes to the client
	reason atomic.Pointer[string]
}

func (c *conn) setReason(s string) { c.reason.CompareAndSwap(nil, &s) }

// upConn is the upstream connection once the relay started (last is set
// after up, so a reader that saw last sees up), else nil.
func (c *conn) upConn() net.Conn {
	if c.last.Load() == 0 {
		return nil
	}
	return c.up
}

// handle connects c to an endpoint and relays until both directions end.
func (r *Relay) handle(c *conn) {
	defer r.wg.Done()
	defer func() {
		r.connsMu.Lock()
		delete(r.conns, c)
		r.connsMu.Unlock()
	}()
	defer c.client.Close()
	r.m.opened()
	var az Authorization
	endpointAddr := ""
	if r.o.Authorize != nil {
		az = r.o.Authorize(c.client)
	}
	if r.o.Authorize != nil && !az.Allowed {
		c.setReason(ReasonRBACDenied) // closed at once: nothing reaches the app
	} else if why := r.admit(); why != "" {
		c.setReason(why) // closed at once: nothing reaches the app
	} else {
		if r.o.Limits != nil {
			defer r.lim.release()
		}
		endpointAddr = r.connect(c)
	}
	if c.up != nil {
		r.relay(c)
		c.up.Close()
	}
	reason := ""
	if p := c.reason.Load(); p != nil {
		reason = *p
	}
	r.m.closed(reason)
	if r.o.Observe != nil {
		r.o.Observe(observability.TCPConn{
			Direction: r.o.Direction, LocalService: r.o.LocalService,
			UpstreamService: r.o.Service, Endpoint: endpointAddr,
			Caller: c.client.RemoteAddr().String(), Start: c.start, End: time.Now(),
			BytesIn: c.in.Load(), BytesOut: c.out.Load(), Reason: reason,
			PeerIdentity: az.PeerIdentity, AuthzRule: az.Rule,
		})
	}
}

// admit applies the limits in force to a new connection: "" admits it,
// else the reason it is refused.
func (r *Relay) admit() string {
	if r.o.Limits == nil {
		return ""
	}
	r.lim.apply(r.o.Limits())
	why := r.lim.admit()
	if why != "" {
		r.log.Debug().Str("reason", why).Msg("connection refused")
	}
	return why
}

// connect dials an endpoint for c, trying others after a connect failure;
// it sets c.up and returns the endpoint's address, or sets c's reason.
func (r *Relay) connect(c *conn) string {
	ctx := r.ctx
	// The first lookup of a service may wait for discovery's answer.
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	set, err := r.endpoints(rctx)
	cancel()
	if err != nil {
		if errors.Is(err, endpoint.ErrUnknownService) {
			c.setReason(ReasonNoRoute)
		} else {
			c.setReason(ReasonNoHealthyEndpoint)
		}
		r.log.Debug().Err(err).Msg("no endpoints")
		return ""
	}
	if len(set.eps) == 0 {
		c.setReason(ReasonNoHealthyEndpoint)
		return ""
	}
	timeout := set.pol.ConnectTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	tried := map[int]bool{}
	addr := ""
	for attempt := 0; attempt < min(maxConnectAttempts, len(set.eps)); attempt++ {
		i := set.picker.Pick()
		for k := 0; tried[i] && k < len(set.eps); k++ {
			i = (i + 1) % len(set.eps) // another endpoint than the ones that failed
		}
		tried[i] = true
		addr = set.eps[i].Addr
		d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		dial := d.DialContext
		if r.o.WrapDial != nil {
			dial = r.o.WrapDial(dial)
		}
		up, err := dial(ctx, "tcp", addr)
		if err == nil {
			r.detector.Report(set.hosts[i], outlier.Success)
			c.up = up
			return addr
		}
		if r.detector.Report(set.hosts[i], outlier.LocalFailure) {
			r.log.Warn().Str("endpoint", addr).Msg("endpoint ejected after connect failures")
		}
		r.m.connectFailed()
		r.log.Debug().Err(err).Str("endpoint", addr).Msg("connect failed")
		if ctx.Err() != nil {
			break
		}
	}
	c.setReason(ReasonConnectFailure)
	return addr
}

// relay copies both ways until both directions ended, or one failed, or
// the connection was idle both ways for the idle timeout.
func (r *Relay) relay(c *conn) {
	c.last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	go func() { r.copy(c, c.up, c.client, &c.in, true); done <- struct{}{} }()
	go func() { r.copy(c, c.client, c.up, &c.out, false); done <- struct{}{} }()
	<-done
	<-done
}

// copyChunk is how much one splice call may move before the byte counters
// and the activity time are updated.
const copyChunk = 1 << 20

// copy moves src to dst. Each io.CopyN between two *net.TCPConn is a
// splice; a read deadline of one idle timeout ends a direction only when
// the other side was idle that long too. At EOF dst's write side is shut
// (half-close); on an error both connections are closed.
func (r *Relay) copy(c *conn, dst, src net.Conn, count *atomic.Int64, toUpstream bool) {
	idle := r.o.IdleTimeout
	for {
		step := idle
		if r.closing.Load() {
			step = shutdownIdle
		}
		_ = src.SetReadDeadline(time.Now().Add(step))
		n, err := io.CopyN(dst, src, copyChunk)
		if n > 0 {
			count.Add(n)
			r.m.moved(toUpstream, n)
			c.last.Store(time.Now().UnixNano())
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if n > 0 {
				continue // bytes moved in this chunk
			}
			quiet := time.Since(time.Unix(0, c.last.Load()))
			switch {
			case r.closing.Load() && quiet >= shutdownIdle:
				c.setReason(ReasonShutdown)
			case r.closing.Load(), quiet < idle:
				continue // the other way is busy, or bytes moved just now
			default:
				c.setReason(ReasonIdleTimeout)
			}
		}
		c.client.Close()
		c.up.Close()
		return
	}
}

// Close closes the listeners and every connection at once.
func (r *Relay) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.Shutdown(ctx)
	return nil
}
