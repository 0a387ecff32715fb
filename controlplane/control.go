// Package controlplane is the `mesh control` role: it watches Consul (and
// the CMDB when configured), merges them into a platform-neutral model,
// translates the model into Envoy v3 resources and serves them over ADS to
// mesh agents, Envoy and gRPC proxyless clients. Sources, the model, the
// translation and the xDS server live in sub-packages; this package wires
// them together and serves the admin endpoints.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/kubeexport"
	"github.com/meshvm/mesh/controlplane/loadstats"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/source/cmdbsource"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/controlplane/source/kubernetes"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/sdnotify"
)

// Options are knobs for tests and embedding; zero values take defaults.
type Options struct {
	// Consul tunes the Consul source's blocking queries and backoff.
	Consul consul.Options
	// FirstWait bounds how long the first model waits for optional
	// sources (the CMDB) once Consul has answered (default 5s).
	FirstWait time.Duration
	// ShutdownTimeout bounds the graceful stop of the servers (default 5s).
	ShutdownTimeout time.Duration
	// HTTPClient is the CMDB's HTTP client (default: cmdb's own).
	HTTPClient *http.Client
	// Registry, when set, replaces the Consul source (benchmarks with
	// synthetic catalogs, embedding with another registry).
	Registry source.Source
	// Kubernetes tunes the Kubernetes source, KubeExport the export of
	// VM services into Kubernetes.
	Kubernetes kubernetes.Options
	KubeExport kubeexport.Options
	// CAPoll is how often the CA files are checked for changes (a root
	// rotation run by `mesh control ca rotate`; default 2s).
	CAPoll time.Duration
}

// Control is one control-plane process.
type Control struct {
	log     zerolog.Logger
	base    zerolog.Logger // for pollers a reload starts
	opts    Options
	reg     *prometheus.Registry
	xds     *xds.Server
	load    *loadstats.Server
	rec     *reconciler
	cmdb    *cmdbSlot
	sources []source.Source
	// export writes VM services into Kubernetes; nil when disabled.
	export *kubeexport.Exporter

	// reloadMu serialises reloads; cfg (read with config()) is the
	// config in force.
	reloadMu sync.Mutex
	cfgMu    sync.RWMutex
	cfg      config.Config
	// notified is set once systemd was told READY=1.
	notified atomic.Bool
	// prot secures the xDS port (identity.go).
	prot *protection
	// events ends the admin listener's event streams (set by Run).
	events atomic.Pointer[context.Context]
}

// New builds the control plane from cfg; it starts nothing.
func New(cfg config.Config, log zerolog.Logger, opts Options) (*Control, error) {
	if opts.FirstWait <= 0 {
		opts.FirstWait = 5 * time.Second
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	c := &Control{
		cfg:  cfg,
		log:  log.With().Str("component", "control").Logger(),
		base: log,
		opts: opts,
		reg:  observability.NewRegistry(),
	}
	registry := opts.Registry
	if registry == nil {
		cs, err := consul.New(cfg.Consul, log.With().Str("component", "consul").Logger(), opts.Consul)
		if err != nil {
			return nil, err
		}
		registry = cs
	}
	var poller *cmdbsource.Source
	if cfg.Control.CMDB.URL != "" {
		p, err := c.newCMDB(cfg.Control.CMDB)
		if err != nil {
			return nil, err
		}
		poller = p
	}
	c.cmdb = newCMDBSlot(log.With().Str("component", "cmdb").Logger(), poller)
	inputs := []input{{src: registry, required: true}, {src: c.cmdb}}
	c.sources = []source.Source{registry, c.cmdb}
	if k := cfg.Control.Kubernetes; k.On() {
		client, err := kubernetes.NewClient(k)
		if err != nil {
			return nil, fmt.Errorf("kubernetes: %w", err)
		}
		ks, err := kubernetes.New(k, client, log.With().Str("component", "kubernetes").Logger(), opts.Kubernetes)
		if err != nil {
			return nil, err
		}
		inputs = append(inputs, input{src: ks})
		c.sources = append(c.sources, ks)
		if k.ExportNamespace != "" {
			c.export = kubeexport.New(client, k.ExportNamespace, log.With().Str("component", "kubeexport").Logger(), c.reg, opts.KubeExport)
		}
	}
	c.xds = xds.New(log.With().Str("component", "xds").Logger(), c.reg)
	if err := c.openProtection(cfg); err != nil {
		return nil, err
	}
	s := settingsOf(cfg)
	gw, err := gatewaySettings(cfg.Control.Gateway)
	if err != nil {
		return nil, err
	}
	s.gateway = gw
	c.load = loadstats.New(log.With().Str("component", "loadstats").Logger(), c.reg,
		loadstats.Options{Interval: cfg.Control.LoadReportingInterval})
	c.rec = newReconciler(log.With().Str("component", "reconcile").Logger(), inputs, s,
		opts.FirstWait, c.xds, newMetrics(c.reg, c.sources))
	if c.export != nil {
		c.rec.served = c.export.Update
	}
	return c, nil
}

// newCMDB builds a CMDB poller for cfg; it starts nothing.
func (c *Control) newCMDB(cfg config.CMDB) (*cmdbsource.Source, error) {
	f, err := cmdb.New(cfg, c.opts.HTTPClient)
	if err != nil {
		return nil, fmt.Errorf("cmdb: %w", err)
	}
	return cmdbsource.New(cmdb.NewPoller(f, cfg.Interval, c.base)), nil
}

// settingsOf returns the reconciler's settings in cfg.
func settingsOf(cfg config.Config) settings {
	return settings{
		debounce: cfg.Control.Debounce,
		mtls:     translate.MTLSFromConfig(cfg.Control),
		merge: model.MergeOptions{
			DrainingStatuses: cfg.Control.CMDB.DrainingStatuses,
			Policies:         cfg.Policies,
			Services:         cfg.Control.Services,
			VirtualIPCIDR:    cfg.Control.VirtualIPs.CIDR,
		},
		authz: translate.NewAuthorization(cfg.Control),
	}
}

func (c *Control) config() config.Config {
	c.cfgMu.RLock()
	defer c.cfgMu.RUnlock()
	return c.cfg
}

func (c *Control) setConfig(cfg config.Config) {
	c.cfgMu.Lock()
	c.cfg = cfg
	c.cfgMu.Unlock()
}

// Run serves xDS and the admin endpoints and reconciles until ctx is
// done, then stops gracefully: xDS streams end, in-flight admin requests
// finish, both bounded by the shutdown timeout. Under systemd
// (NOTIFY_SOCKET) it sends READY=1 once both listeners are up and the
// first model is served (what /ready reports), STATUS lines, STOPPING=1
// when ctx is done, and watchdog pings (WatchdogSec) until it returns.
func (c *Control) Run(ctx context.Context) error {
	cfg := c.config()
	xl, err := net.Listen("tcp", cfg.Control.XDSAddr)
	if err != nil {
		return fmt.Errorf("listen xds on %s: %w", cfg.Control.XDSAddr, err)
	}
	al, err := net.Listen("tcp", cfg.Control.AdminAddr)
	if err != nil {
		xl.Close()
		return fmt.Errorf("listen admin on %s: %w", cfg.Control.AdminAddr, err)
	}
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	g := grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxConcurrentStreams(1 << 20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, c.prot.grpcOptions()...)...)
	c.xds.Register(streams, g)
	if err := c.prot.start(g); err != nil {
		xl.Close()
		al.Close()
		return err
	}
	c.load.Register(streams, g) // LRS next to ADS, on the same server
	admin := &http.Server{Handler: c.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	// Event streams (the dashboard's) end when the admin server shuts down.
	events, endEvents := context.WithCancel(context.Background())
	defer endEvents()
	c.events.Store(&events)
	admin.RegisterOnShutdown(endEvents)

	// The watchdog keeps pinging through the graceful stop.
	wdCtx, stopWatchdog := context.WithCancel(context.WithoutCancel(ctx))
	wdDone := make(chan struct{})
	go func() {
		defer close(wdDone)
		if err := sdnotify.Watchdog(wdCtx); err != nil {
			c.log.Warn().Err(err).Msg("systemd watchdog pings failed")
		}
	}()
	defer func() { stopWatchdog(); <-wdDone }()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(4)
	go func() {
		defer wg.Done()
		if err := g.Serve(xl); err != nil {
			errs <- fmt.Errorf("serve xds: %w", err)
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		if err := admin.Serve(al); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("serve admin: %w", err)
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		_ = c.rec.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		c.notifyReady(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.prot.run(ctx)
	}()
	if c.export != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.export.Run(ctx); err != nil {
				c.log.Error().Err(err).Msg("kubernetes export stopped")
			}
		}()
	}
	c.log.Info().Str("xds_addr", xl.Addr().String()).Str("admin_addr", al.Addr().String()).Str("xds_auth", c.prot.mode).
		Bool("xds_tls", c.prot.ca != nil).Msg("control plane serving")
	_ = sdnotify.Status("listening; waiting for the first view of " + c.sources[0].Name())

	<-ctx.Done()
	c.log.Info().Msg("stopping")
	_ = sdnotify.Stopping()
	_ = sdnotify.Status("stopping: closing xDS streams")
	endStreams()
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(c.opts.ShutdownTimeout)
	select {
	case <-stopped:
	case <-timer.C:
		g.Stop()
		<-stopped
	}
	timer.Stop()
	sctx, scancel := context.WithTimeout(context.Background(), c.opts.ShutdownTimeout)
	_ = admin.Shutdown(sctx)
	scancel()
	wg.Wait()
	close(errs)
	return <-errs
}

// notifyReady tells systemd READY=1 once the first model is served (the
// listeners are up before Run starts it), or returns when ctx is done.
func (c *Control) notifyReady(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !c.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	services := 0
	if m := c.Model(); m != nil {
		services, _ = m.Counts()
	}
	c.log.Info().Int("services", services).Msg("ready: listeners up, first model served")
	_ = sdnotify.Status(fmt.Sprintf("ready: serving %d services", services))
	_ = sdnotify.Ready()
	c.notified.Store(true)
}

// Ready reports whether the first model is being served.
func (c *Control) Ready() bool { return c.xds.Ready() }

// Model returns the model being served, nil before the first.
func (c *Control) Model() *model.Model { return c.rec.current.Load() }
