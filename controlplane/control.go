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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/source/cmdbsource"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
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
}

// Control is one control-plane process.
type Control struct {
	cfg     config.Config
	log     zerolog.Logger
	opts    Options
	reg     *prometheus.Registry
	xds     *xds.Server
	rec     *reconciler
	sources []source.Source
}

// New builds the control plane from cfg; it starts nothing.
func New(cfg config.Config, log zerolog.Logger, opts Options) (*Control, error) {
	if opts.FirstWait <= 0 {
		opts.FirstWait = 5 * time.Second
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "mesh"}))

	registry := opts.Registry
	if registry == nil {
		cs, err := consul.New(cfg.Consul, log.With().Str("component", "consul").Logger(), opts.Consul)
		if err != nil {
			return nil, err
		}
		registry = cs
	}
	inputs := []input{{src: registry, required: true}}
	if cfg.Control.CMDB.URL != "" {
		f, err := cmdb.New(cfg.Control.CMDB, opts.HTTPClient)
		if err != nil {
			return nil, fmt.Errorf("cmdb: %w", err)
		}
		p := cmdb.NewPoller(f, cfg.Control.CMDB.Interval, log)
		inputs = append(inputs, input{src: cmdbsource.New(p)})
	}
	sources := make([]source.Source, len(inputs))
	for i, in := range inputs {
		sources[i] = in.src
	}
	xs := xds.New(log.With().Str("component", "xds").Logger(), reg, cfg.Policies.Default)
	c := &Control{
		cfg:     cfg,
		log:     log.With().Str("component", "control").Logger(),
		opts:    opts,
		reg:     reg,
		xds:     xs,
		sources: sources,
		rec: &reconciler{
			log:       log.With().Str("component", "reconcile").Logger(),
			inputs:    inputs,
			debounce:  cfg.Control.Debounce,
			firstWait: opts.FirstWait,
			opts: model.MergeOptions{
				DrainingStatuses: cfg.Control.CMDB.DrainingStatuses,
				Policies:         cfg.Policies,
			},
			xds:        xs,
			translator: translate.NewTranslator(),
		},
	}
	c.rec.metrics = newMetrics(reg, sources)
	return c, nil
}

// Run serves xDS and the admin endpoints and reconciles until ctx is
// done, then stops gracefully: xDS streams end, in-flight admin requests
// finish, both bounded by the shutdown timeout.
func (c *Control) Run(ctx context.Context) error {
	xl, err := net.Listen("tcp", c.cfg.Control.XDSAddr)
	if err != nil {
		return fmt.Errorf("listen xds on %s: %w", c.cfg.Control.XDSAddr, err)
	}
	al, err := net.Listen("tcp", c.cfg.Control.AdminAddr)
	if err != nil {
		xl.Close()
		return fmt.Errorf("listen admin on %s: %w", c.cfg.Control.AdminAddr, err)
	}
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	c.xds.Register(streams, g)
	admin := &http.Server{Handler: c.adminHandler(), ReadHeaderTimeout: 10 * time.Second}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(3)
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
	c.log.Info().Str("xds_addr", xl.Addr().String()).Str("admin_addr", al.Addr().String()).Msg("control plane serving")

	<-ctx.Done()
	c.log.Info().Msg("stopping")
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

// Ready reports whether the first model is being served.
func (c *Control) Ready() bool { return c.xds.Ready() }

// Model returns the model being served, nil before the first.
func (c *Control) Model() *model.Model { return c.rec.current.Load() }
