// Package gateway is the `mesh gateway` role: the one entrance from
// outside. It terminates TLS (certificate files chosen by SNI, or ACME),
// runs the edge steps on every request — strip forged identity headers,
// limit per client IP, route (routematch), CORS, authenticate once (JWT,
// API keys), limit per subject, bound the body — and forwards into the
// mesh through the same outbound steps an agent runs (endpoints, breaker,
// timeout, retries, load balancing). Routes, JWT providers and the
// services' clusters come from mesh control over ADS; certificates and
// limits from the gateway's own config section.
//
// Files: gateway.go (Gateway, New, Run, shutdown), command.go (the
// cobra command), listeners.go (servers, limits), tls.go, xds.go (node,
// cache, apply), served.go (the config being served, swapped
// atomically), steps.go (the edge step order) and step_*.go, clientip.go,
// metrics.go, admin.go.
package gateway

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/certstore"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/daemon"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/governance/ratelimit"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/registration"
	"github.com/meshvm/mesh/sdnotify"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// Gateway is one edge gateway process.
type Gateway struct {
	cfg  config.Config
	log  zerolog.Logger // component=gateway
	base zerolog.Logger

	consul    *consulapi.Client
	forwarder *proxy.Forwarder
	state     *chain.State
	node      string

	certs   *certstore.Store
	tlsConf *edgeTLS
	trusted trustedProxies
	perIP   *ratelimit.Keyed // nil: off
	perSub  *ratelimit.Keyed // nil: off

	served atomic.Pointer[served] // what requests are served by now
	swapMu sync.Mutex
	cached xdsclient.Resources
	saver  *xdsclient.CacheSaver
	xds    *xdsclient.Client
	// A config held until its routed clusters' endpoints arrive
	// (warming.go), under swapMu.
	warming      *xdsclient.Resources
	warmingSince time.Time
	warmTimer    *time.Timer

	registry *prometheus.Registry
	obs      *observability.Observer
	metrics  *metrics

	// ident is the gateway's mesh identity (identity.go), nil without
	// gateway.join_token_file; dialer dials the services' endpoints,
	// with mTLS where they take it.
	ident  *enroll.Enrollment
	dialer *mtls.Dialer

	reg       *registration.Registrar
	listening atomic.Bool
	draining  atomic.Bool
	addrs     sync.Map // listener name -> bound address
}

// New builds a gateway from a validated config: it loads the
// certificates (a bad file is an error now) and the cached control-plane
// config; it starts nothing.
func New(cfg config.Config, log zerolog.Logger) (*Gateway, error) {
	gc := cfg.Gateway
	cc := consulapi.DefaultConfig()
	cc.Address = cfg.Consul.Addr
	cc.Token = cfg.Consul.Token
	cc.Datacenter = cfg.Consul.Datacenter
	client, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Consul.Addr, err)
	}
	node := gc.Node
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
	}
	registry := observability.NewRegistry()
	obs, err := observability.NewObserver(cfg.Observability, observability.Options{
		Service: gc.Name, Registry: registry, Log: log})
	if err != nil {
		return nil, fmt.Errorf("observability: %w", err)
	}
	m := obs.Metrics()
	g := &Gateway{
		cfg:      cfg,
		log:      log.With().Str("component", "gateway").Logger(),
		base:     log,
		consul:   client,
		state:    chain.NewState(nil).WithMetrics(m),
		node:     node,
		registry: registry,
		obs:      obs,
	}
	fail := func(err error) (*Gateway, error) {
		_ = obs.Close(context.Background())
		return nil, err
	}
	if g.metrics, err = newMetrics(registry); err != nil {
		return fail(err)
	}
	if err := g.setupIdentity(); err != nil {
		return fail(err)
	}
	g.forwarder = proxy.NewForwarder(proxy.Options{Log: log, WrapDial: func(d observability.DialFunc) observability.DialFunc {
		return observability.DialFunc(g.dialer.Wrap(g.refuseStrict(mtls.DialFunc(m.Dialer(d)))))
	}})
	if g.certs, err = g.newCertStore(gc.TLS, gc.CacheDir); err != nil {
		return fail(err)
	}
	tc, err := tlsConfig(g.certs, gc.TLS.ClientCA)
	if err != nil {
		return fail(err)
	}
	g.tlsConf = &edgeTLS{cfg: tc, clientCAHosts: clientCAHosts(gc.TLS.ClientCA)}
	if g.trusted, err = parseTrusted(gc.Limits.TrustedProxies); err != nil {
		return fail(fmt.Errorf("gateway.limits.trusted_proxies: %w", err))
	}
	if g.perIP, err = keyed(gc.Limits.PerIP, gc.Limits.MaxKeys); err != nil {
		return fail(fmt.Errorf("gateway.limits.per_ip: %w", err))
	}
	if g.perSub, err = keyed(gc.Limits.PerSubject, gc.Limits.MaxKeys); err != nil {
		return fail(fmt.Errorf("gateway.limits.per_subject: %w", err))
	}
	s, cached := g.initialServed()
	g.served.Store(s)
	g.cached = cached
	g.saver = xdsclient.NewCacheSaver(g.cachePath())
	return g, nil
}

func keyed(rl config.RateLimit, maxKeys int) (*ratelimit.Keyed, error) {
	if rl.MaxTokens == 0 {
		return nil, nil
	}
	return ratelimit.NewKeyed(ratelimit.Config{MaxTokens: int64(rl.MaxTokens), TokensPerFill: int64(rl.TokensPerFill),
		FillInterval: rl.FillInterval}, maxKeys, nil)
}

// Run binds the listeners, connects to the control plane, registers the
// gateway in Consul and serves until ctx is done; then it deregisters,
// keeps serving for the drain period and lets in-flight requests finish
// (bounded by shutdown_timeout). A listener that cannot be bound is an
// error before anything is registered.
func (g *Gateway) Run(ctx context.Context) error {
	gc := g.cfg.Gateway
	lns, err := g.bind()
	if err != nil {
		_ = g.obs.Close(ctx)
		return err
	}
	if len(gc.ControlPlane) > 0 {
		if g.xds, err = g.newXDSClient(); err != nil {
			closeAll(lns)
			_ = g.obs.Close(ctx)
			return fmt.Errorf("xds client: %w", err)
		}
	}
	g.reg = registration.New(g.consul, g.registrationSpec(lns[0].ln.Addr()), 0, g.base.With().Str("component", "registration").Logger()).
		WithMetrics(g.obs.Metrics())

	obsCtx, stopObs := context.WithCancel(context.WithoutCancel(ctx))
	obsDone := make(chan error, 1)
	go func() { obsDone <- g.obs.Run(obsCtx) }()

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	group := daemon.NewGroup()
	goRun := group.Go
	if cur := g.served.Load(); cur.auth != nil { // the cached config's JWKS refresh
		authCtx, cancel := context.WithCancel(bg)
		cur.stop = cancel
		cur.auth.run(authCtx)
	}
	if g.ident != nil {
		goRun("identity", func() error { return g.ident.Run(bg) })
	}
	goRun("registration", func() error { return g.reg.Run(bg) })
	goRun("certificates", func() error { return g.certs.Run(bg, gc.TLS.ReloadInterval) })
	goRun("governance", func() error { return g.state.Run(bg) })
	goRun("systemd watchdog", func() error { return sdnotify.Watchdog(bg) })
	goRun("readiness", func() error { return g.notifyReady(bg) })
	for _, k := range []*ratelimit.Keyed{g.perIP, g.perSub} {
		if k != nil {
			goRun("rate-limit sweep", func() error { return k.Run(bg, 10*time.Second) })
		}
	}
	if g.xds != nil {
		goRun("xds client", func() error { return g.xds.Run(bg) })
		goRun("xds cache", func() error {
			return g.saver.Run(bg, func(err error) { g.log.Warn().Err(err).Msg("could not save the xds cache") })
		})
	}
	for _, l := range lns {
		goRun(l.name+" listener", func() error { return l.serve() })
		g.log.Info().Str("listener", l.name).Str("addr", l.ln.Addr().String()).Msg("listening")
	}
	g.listening.Store(true)

	var runErr error
	select {
	case <-ctx.Done():
		g.log.Info().Msg("shutting down: deregistering, then draining")
	case <-group.Failed():
		runErr = group.Err()
		g.log.Error().Err(runErr).Msg("shutting down after a fatal error")
	}
	g.shutdown(lns)
	stopBG()
	group.Wait()
	if cur := g.served.Load(); cur.stop != nil { // the served config's JWKS refresh
		cur.stop()
	}
	g.forwarder.CloseIdleConnections()
	stopObs()
	if err := <-obsDone; err != nil {
		g.log.Warn().Err(err).Msg("observability: final flush incomplete")
	}
	return runErr
}

// shutdown deregisters, drains and stops the servers, in that order.
func (g *Gateway) shutdown(lns []*listener) {
	gc := g.cfg.Gateway
	g.draining.Store(true)
	servers := make([]daemon.Named, 0, len(lns))
	for _, l := range lns {
		servers = append(servers, daemon.Named{Name: l.name, Server: l.srv})
	}
	daemon.Drain{Log: g.log, Deregister: g.reg.Deregister, Period: gc.DrainPeriod, Timeout: gc.ShutdownTimeout,
		Audience: "the load balancer"}.Run(servers)
}

// registrationSpec registers the gateway as a service of kind gateway:
// its HTTPS listener, checked by TCP connect.
func (g *Gateway) registrationSpec(https net.Addr) registration.Spec {
	gc := g.cfg.Gateway
	port := https.(*net.TCPAddr).Port
	adv := gc.AdvertiseAddr
	if adv == "" {
		adv = advertiseAddr(https)
	}
	return registration.Spec{
		Service:       gc.Name,
		Node:          g.node,
		AdvertiseAddr: adv,
		InboundPort:   port,
		AppAddress:    checkAddr(https),
		AppPort:       port,
		AppProtocol:   config.AppProtocolHTTP1,
		Tags:          []string{wire.KindGateway},
		Meta:          map[string]string{wire.MetaKind: wire.KindGateway},
	}
}

// checkAddr is where Consul's TCP check reaches the HTTPS listener.
func checkAddr(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok && !t.IP.IsUnspecified() {
		return t.IP.String()
	}
	return "127.0.0.1"
}

func advertiseAddr(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok && !t.IP.IsUnspecified() {
		return t.IP.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// notifyReady tells systemd READY=1 once the listeners serve and the
// gateway is registered.
func (g *Gateway) notifyReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !g.Readiness().Ready {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	g.log.Info().Msg("ready: listeners up, registered")
	_ = sdnotify.Status("ready")
	return sdnotify.Ready()
}

// Addr returns the bound address of a listener ("https", "http",
// "admin"), or "" before Run bound it.
func (g *Gateway) Addr(name string) string {
	v, _ := g.addrs.Load(name)
	s, _ := v.(string)
	return s
}

// ReloadFrom re-reads the config: certificate files are re-read by the
// store as they change, so a reload applies the log level and reports
// what needs a restart.
func (g *Gateway) ReloadFrom(_ context.Context, load func() (*config.Config, error)) error {
	next, err := load()
	if err != nil {
		g.metrics.reloads.WithLabelValues("error").Inc()
		g.log.Error().Err(err).Msg("config reload failed; the running config stays")
		return err
	}
	if level, err := zerolog.ParseLevel(next.Log.Level); err == nil {
		zerolog.SetGlobalLevel(level)
	}
	g.metrics.reloads.WithLabelValues("ok").Inc()
	if diff := config.RestartOnly(config.RoleGateway, g.cfg, *next); len(diff) > 0 {
		g.log.Warn().Strs("settings", diff).Msg("config reloaded; these settings need a restart")
	} else {
		g.log.Info().Msg("config reloaded")
	}
	return nil
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}
