// Package agent is the `mesh agent` role: the sidecar next to one app
// instance. It owns the inbound, outbound, per-upstream and admin
// listeners, registers the app in Consul, and shuts down without losing
// requests.
package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/daemon"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/discovery"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/observability/loadreport"
	"github.com/meshvm/mesh/sdnotify"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// Agent is one sidecar.
type Agent struct {
	cfgMu sync.RWMutex
	cfg   config.Config // read with config(): a reload replaces it

	log  zerolog.Logger // the agent's own, component=agent
	base zerolog.Logger // for the parts, which add their own component

	consul    *consulapi.Client
	resolver  *discovery.Consul
	forwarder *proxy.Forwarder
	nodeName  string

	// The data path: governance state that outlives configs, and the
	// compiled handlers, swapped atomically on every accepted config.
	local    chain.Local
	state    *chain.State
	handlers *chain.Switch
	cached   xdsclient.Resources // the disk cache the agent started from
	saver    *xdsclient.CacheSaver
	xds      *xdsclient.Client // nil without a control plane
	// scope is which services the agent subscribes to (scope.go); nil
	// without a control plane.
	scope *scope
	// load counts requests per upstream and locality; lrs reports them to
	// the control plane (nil without one).
	load   *loadreport.Store
	lrs    *loadreport.Client
	swapMu sync.Mutex // orders handler swaps by xDS and by reload

	registry *prometheus.Registry
	reloads  *prometheus.CounterVec
	// obs records every request crossing a listener (metrics, access
	// log, spans) and holds the governance and infrastructure metrics.
	obs *observability.Observer

	app *appCheck // probes the app for /ready

	// set by Run
	reg         *registrar
	advertise   string
	inboundPort int
	listening   atomic.Bool
	// awaitingCert is set while the registration waits for a certificate
	// (strict mode, awaitCertificate).
	awaitingCert atomic.Bool
	draining     atomic.Bool
	addrs        sync.Map // listener name -> bound address

	probed atomic.Uint32 // endpoint.Protocol found by probeApp (app_protocol auto)

	// mTLS: the identity from agent.tls files (nil without), the
	// dialer of peer agents, their metrics.
	fileCreds *identity.Credentials
	files     *identity.Files
	dialer    *mtls.Dialer
	mtlsM     *mtls.Metrics
	icept     *interception // nil unless agent.interception.enabled (intercept.go)

	tcpOnce sync.Once // the TCP relays' metrics, registered by the first relay
	tcpM    *tcpproxy.Metrics
	tcpErr  error

	// ident is the workload identity (identity.go), nil without
	// agent.join_token_file; creds are its current credentials (nil
	// likewise), for the data path's mTLS.
	ident *enroll.Enrollment
	creds *identity.Credentials
}

// New builds an agent from a validated config; it starts nothing.
func New(cfg config.Config, log zerolog.Logger) (*Agent, error) {
	cc := consulapi.DefaultConfig()
	cc.Address = cfg.Consul.Addr
	cc.Token = cfg.Consul.Token
	cc.Datacenter = cfg.Consul.Datacenter
	client, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Consul.Addr, err)
	}
	node := cfg.Agent.Node
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
	}
	registry := observability.NewRegistry()
	obs, err := observability.NewObserver(cfg.Observability, observability.Options{
		Service: cfg.Agent.Service, Registry: registry, Log: log})
	if err != nil {
		return nil, fmt.Errorf("observability: %w", err)
	}
	m := obs.Metrics()
	a := &Agent{
		cfg:      cfg,
		log:      log.With().Str("component", "agent").Logger(),
		base:     log,
		consul:   client,
		resolver: discovery.NewConsul(client, log),
		nodeName: node,
		local:    chain.Local{Service: cfg.Agent.Service, Region: cfg.Agent.Locality.Region, Zone: cfg.Agent.Locality.Zone},
		state:    chain.NewState(nil).WithMetrics(m),
		load:     loadreport.NewStore(),
		registry: registry,
		obs:      obs,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Name: "config_reloads_total",
			Help: "Config reloads (SIGHUP) by result: ok, or error (the running config stays)."}, []string{"result"}),
	}
	a.state.WithLoad(a.load)
	if err := a.setupIdentity(cfg); err != nil {
		_ = obs.Close(context.Background())
		return nil, err
	}
	a.forwarder = proxy.NewForwarder(proxy.Options{Log: log, WrapDial: func(d observability.DialFunc) observability.DialFunc {
		return observability.DialFunc(a.dialer.Wrap(mtls.DialFunc(m.Dialer(d))))
	}})
	a.app = newAppCheck(a)
	a.registry.MustRegister(a.reloads)
	if a.ident, err = newIdentity(cfg, node, a.nodeID(), log.With().Str("component", "identity").Logger()); err != nil {
		_ = obs.Close(context.Background())
		return nil, err
	}
	if a.ident != nil {
		a.creds = a.ident.Credentials()
		a.ident.RegisterMetrics(a.registry)
		a.dialer.Creds = a.creds
	}
	m.EndpointsFrom(a.endpointCounts)
	t, cached := a.initialTable()
	h, err := chain.Compile(t, a.resolver, a.local, a.forwarder, a.state, log)
	if err != nil {
		_ = obs.Close(context.Background())
		return nil, fmt.Errorf("compile the initial config: %w", err)
	}
	a.handlers = chain.NewSwitch(h)
	a.cached = cached
	a.saver = xdsclient.NewCacheSaver(a.cachePath())
	return a, nil
}

// listener is one bound socket and what serves it: an HTTP server, or a
// TCP relay (tcp upstreams, the inbound side of a tcp app).
type listener struct {
	name string
	ln   net.Listener
	srv  server
}

// server is what serves a listener: proxy.Server, *tcpproxy.Relay or, for
// admin, net/http's.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// Run binds every listener, registers the app and serves until ctx is
// done. Then it deregisters, keeps serving for the drain period, stops
// accepting, lets in-flight requests finish (bounded by shutdown_timeout)
// and returns nil. A listener that cannot be bound is an error before
// anything is registered.
func (a *Agent) Run(ctx context.Context) error {
	c := a.config().Agent
	lns, err := a.bind()
	if err != nil {
		_ = a.obs.Close(ctx)
		return err
	}
	a.inboundPort = lns[0].ln.Addr().(*net.TCPAddr).Port
	a.advertise = advertiseAddr(c.AdvertiseAddr, lns[0].ln.Addr())

	if len(c.ControlPlane) > 0 {
		node, err := a.xdsNode()
		if err == nil {
			m := a.obs.Metrics()
			a.scope = newScope(c, a.handlers, a.state)
			clusters, routes := a.scope.subscriptions(a.cached)
			opts := xdsclient.Options{
				Servers: c.ControlPlane, Node: node, Apply: a.applyXDS, Listeners: wire.AgentListeners(),
				Delta: true, Clusters: clusters, Routes: routes,
				Initial: a.cached, Log: a.base.With().Str("component", "xds").Logger(),
				OnConnection: func(server string, up bool) {
					if up {
						m.XDSConnected(server, c.ControlPlane...)
					} else {
						m.XDSDisconnected()
					}
				},
				OnResponse:  m.XDSUpdate,
				OnResources: m.XDSResources,
			}
			a.secureXDS(&opts)
			a.xds, err = xdsclient.New(opts)
			a.scope.xds = a.xds
			a.state.OnMiss(a.scope.miss)
		}
		if err == nil {
			a.lrs, err = loadreport.NewClient(loadreport.Options{Servers: c.ControlPlane, Node: node, Store: a.load,
				Log: a.base.With().Str("component", "loadreport").Logger()})
		}
		if err != nil {
			closeAll(lns)
			_ = a.obs.Close(ctx)
			return fmt.Errorf("xds client: %w", err)
		}
	}

	// The observer outlives the listeners: the last requests are logged
	// and their spans exported after the servers stopped.
	obsCtx, stopObs := context.WithCancel(context.WithoutCancel(ctx))
	obsDone := make(chan error, 1)
	go func() { obsDone <- a.obs.Run(obsCtx) }()

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	group := daemon.NewGroup()
	goRun := group.Go
	goRun("discovery", func() error { return a.resolver.Run(bg) })
	a.setupAppProtocol()
	a.reg = newRegistrar(bg, a, a.registrationSpec(a.config()))
	if c.AppProtocol != config.AppProtocolTCP {
		goRun("app protocol probe", func() error { return a.probeApp(bg) })
	}
	goRun("systemd watchdog", func() error { return sdnotify.Watchdog(bg) })
	goRun("readiness", func() error { return a.notifyReady(bg) })
	goRun("app check", func() error { return a.app.run(bg) })
	goRun("governance", func() error { return a.state.Run(bg) })
	if a.files != nil {
		goRun("identity files", func() error { return a.files.Watch(bg) })
	}
	if a.ident != nil {
		goRun("identity", func() error { return a.ident.Run(bg) })
	}
	a.runInterception(bg, goRun)
	if a.xds != nil {
		goRun("xds client", func() error { return a.xds.Run(bg) })
		goRun("xds scope", func() error { return a.scope.run(bg) })
		goRun("load reports", func() error { return a.lrs.Run(bg) })
		goRun("xds cache", func() error {
			return a.saver.Run(bg, func(err error) { a.log.Warn().Err(err).Msg("could not save the xds cache") })
		})
	}
	for _, l := range lns {
		goRun(l.name+" listener", func() error { return l.srv.Serve(l.ln) })
		a.log.Info().Str("listener", l.name).Str("addr", l.ln.Addr().String()).Msg("listening")
	}
	a.listening.Store(true)

	var runErr error
	select {
	case <-ctx.Done():
		a.log.Info().Msg("shutting down: deregistering, then draining")
	case <-group.Failed():
		runErr = group.Err()
		a.log.Error().Err(runErr).Msg("shutting down after a fatal error")
	}
	a.shutdown(lns)
	stopBG()
	a.reg.wait()
	group.Wait()
	a.forwarder.CloseIdleConnections()
	stopObs()
	if err := <-obsDone; err != nil {
		a.log.Warn().Err(err).Msg("observability: final flush incomplete (spans or access log lines lost)")
	}
	return runErr
}

// shutdown deregisters, drains and stops the servers, in that order.
func (a *Agent) shutdown(lns []listener) {
	c := a.config().Agent
	a.draining.Store(true)
	servers := make([]daemon.Named, 0, len(lns))
	for _, l := range lns {
		servers = append(servers, daemon.Named{Name: l.name, Server: l.srv})
	}
	daemon.Drain{Log: a.log, Deregister: a.reg.deregister, Period: c.DrainPeriod, Timeout: c.ShutdownTimeout,
		Audience: "callers"}.Run(servers)
}

// bind opens every listener: inbound first (its port is registered),
// outbound, each upstream, admin.
func (a *Agent) bind() ([]listener, error) {
	c := a.config().Agent
	type spec struct {
		name, addr string
		h          http.Handler
		tcp        *tcpproxy.Relay // instead of h
	}
	log := a.base
	svc := c.Service
	in, out := observability.Inbound, observability.Outbound
	app := appAddr(c)
	inbound := spec{name: "inbound", addr: c.InboundAddr}
	if c.AppProtocol == config.AppProtocolTCP {
		r, err := a.inboundRelay(app)
		if err != nil {
			return nil, err
		}
		inbound.tcp = r
	} else {
		inbound.h = a.obs.Instrument(in, svc, mtls.PeerHeader(a.peerHeader(), a.handlers.Inbound(app)))
	}
	specs := []spec{inbound, {name: "outbound", addr: c.OutboundAddr, h: a.obs.Instrument(out, svc, a.handlers.Outbound())}}
	for _, u := range c.Upstreams {
		sp := spec{name: "upstream " + u.Service, addr: u.Listen}
		if u.IsTCP() {
			r, err := a.upstreamRelay(u.Service)
			if err != nil {
				return nil, err
			}
			sp.tcp = r
		} else {
			sp.h = a.obs.Instrument(out, svc, a.handlers.Upstream(u.Service))
		}
		specs = append(specs, sp)
	}
	specs = append(specs, spec{name: "admin", addr: c.AdminAddr, h: a.adminHandler()})

	var lns []listener
	for _, s := range specs {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("listen %s on %s: %w", s.name, s.addr, err)
		}
		a.addrs.Store(s.name, ln.Addr().String())
		if s.name == "inbound" {
			ln = a.secureInbound(ln)
		}
		var srv server
		switch {
		case s.tcp != nil:
			srv = s.tcp
		case s.name == "admin":
			srv = &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second}
		default:
			ps := proxy.NewServer(s.h, log)
			if s.name == "inbound" {
				ps.ConnContext = mtls.ConnContext
			}
			srv = ps
		}
		lns = append(lns, listener{name: s.name, ln: ln, srv: srv})
	}
	more, err := a.bindInterception()
	if err != nil {
		closeAll(lns)
		return nil, err
	}
	return append(lns, more...), nil
}

// notifyReady tells systemd READY=1 once the listeners are up and the app
// is registered.
func (a *Agent) notifyReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !a.Ready() {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	a.log.Info().Msg("ready: listeners up, app registered")
	_ = sdnotify.Status("ready")
	return sdnotify.Ready()
}

func closeAll(lns []listener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

// Addr returns the bound address of a listener ("inbound", "outbound",
// "admin", "upstream NAME"), or "" before Run bound it.
func (a *Agent) Addr(name string) string {
	v, _ := a.addrs.Load(name)
	s, _ := v.(string)
	return s
}

func (a *Agent) adminHandler() http.Handler {
	mux := observability.NewAdminMux(a.registry, a.Readiness)
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		observability.WriteJSON(w, a.configDump())
	})
	return mux
}

// endpointCounts yields the healthy endpoints of every service the agent
// routes to now (mesh_discovery_endpoints, read at scrape time): the
// control plane's table, or what Consul answered.
func (a *Agent) endpointCounts(yield func(service string, healthy int)) {
	if t := a.handlers.Current().Table(); t.Static {
		for name, s := range t.Services {
			yield(name, len(s.Endpoints))
		}
		return
	}
	for name, eps := range a.resolver.Snapshot() {
		yield(name, len(eps))
	}
}

// configDump is what the agent knows now: its readiness, registration,
// listeners, the config in force (secrets redacted), and the endpoints of
// every service it has been asked for. observability.WriteJSON writes it
// in the config's language (snake_case keys, durations as "3s").
func (a *Agent) configDump() map[string]any {
	listeners := map[string]string{}
	a.addrs.Range(func(k, v any) bool { listeners[k.(string)] = v.(string); return true })
	reg := map[string]any{"registered": false}
	cfg := a.config()
	if a.reg != nil {
		reg = map[string]any{"id": a.reg.id(), "registered": a.reg.registered(), "service": cfg.Agent.Service,
			"tags": cfg.Agent.Tags, "meta": cfg.Agent.Meta}
	}
	t := a.handlers.Current().Table()
	dump := map[string]any{
		"version": buildinfo.Version,
		"ready":   a.Ready(),
		"node":    a.nodeName,
		"config": map[string]any{"log": cfg.Log, "consul": cfg.Consul, "agent": cfg.Agent,
			"policies": cfg.Policies, "observability": cfg.Observability},
		"draining":     a.draining.Load(),
		"listeners":    listeners,
		"registration": reg,
		"upstreams":    cfg.Agent.Upstreams,
		"consul":       cfg.Consul.Addr,
		"table":        tableDump(t),
		"governance":   a.state.Status(),
		"mtls":         a.mtlsDump(),
	}
	if t.Static {
		services := map[string][]endpoint.Endpoint{}
		for name, s := range t.Services {
			services[name] = s.Endpoints
		}
		dump["services"] = services
		dump["source"] = "xds"
	} else {
		dump["services"] = a.resolver.Snapshot()
		dump["source"] = "consul"
	}
	if a.xds != nil {
		dump["xds"] = a.xds.State()
		dump["xds_subscriptions"] = map[string][]string{
			"clusters": a.xds.Subscriptions(resource.ClusterType),
			"routes":   a.xds.Subscriptions(resource.RouteType),
		}
	}
	if a.ident != nil {
		dump["identity"] = a.ident.Dump()
	}
	if a.icept != nil {
		dump["interception"] = a.interceptionDump()
	}
	return dump
}

// tableDump is the routing table as JSON: version, inbound policy and
// the policy of every service.
func tableDump(t *table.Table) map[string]any {
	policies := map[string]config.Policy{}
	for name, s := range t.Services {
		policies[name] = s.Policy
	}
	return map[string]any{"version": t.Version, "static": t.Static, "inbound": t.Inbound, "default_policy": t.Default, "policies": policies}
}

// advertiseAddr picks the address other agents reach this one on: the
// configured one, else the inbound listener's IP unless it is unspecified,
// else the first non-loopback interface address, else loopback.
func advertiseAddr(configured string, inbound net.Addr) string {
	if configured != "" {
		return configured
	}
	if tcp, ok := inbound.(*net.TCPAddr); ok && !tcp.IP.IsUnspecified() {
		return tcp.IP.String()
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
