package agent

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/registration"
	"github.com/meshvm/mesh/sdnotify"
)

// Reload applies a new, validated config to the running agent without
// dropping a connection: local policies (when not routing by xDS),
// registration tags, meta and health check, drain and shutdown timing,
// the access log's fields and sample ratio, and the trace sample ratio.
// It returns the changed settings that need a restart (their running
// values are kept). On error nothing has changed.
func (a *Agent) Reload(next config.Config) (needRestart []string, err error) {
	a.swapMu.Lock()
	defer a.swapMu.Unlock()
	old := a.config()
	// The restart-only settings are config's (config.RestartOnly): the
	// one list `mesh config diff` classifies changes with.
	needRestart = config.RestartOnly(config.RoleAgent, old, next)
	next = config.KeepRestartOnly(config.RoleAgent, old, next)

	// Policies from the local file route only while no control plane
	// config is in force.
	if cur := a.handlers.Current().Table(); !cur.Static {
		h, err := chain.Compile(table.FromConfig(next), a.resolver, a.local, a.forwarder, a.state, a.base)
		if err != nil {
			return nil, fmt.Errorf("compile the new policies: %w", err)
		}
		a.handlers.Swap(h)
	}
	// Sampling and access log fields change live; the rest of the
	// observability section needs a restart.
	var obsRestart []string
	next.Observability, obsRestart = a.obs.Reload(next.Observability)
	needRestart = append(needRestart, obsRestart...)
	a.setConfig(next)
	if a.reg != nil {
		a.reg.update(a.registrationSpec(next))
	}
	return needRestart, nil
}

func (a *Agent) config() config.Config {
	a.cfgMu.RLock()
	defer a.cfgMu.RUnlock()
	return a.cfg
}

func (a *Agent) setConfig(c config.Config) {
	a.cfgMu.Lock()
	a.cfg = c
	a.cfgMu.Unlock()
}

// registrationSpec is what the agent registers in Consul for config c.
func (a *Agent) registrationSpec(c config.Config) registration.Spec {
	ac := c.Agent
	return registration.Spec{
		Service:        ac.Service,
		Node:           a.nodeName,
		AdvertiseAddr:  a.advertise,
		InboundPort:    a.inboundPort,
		AppAddress:     ac.AppAddress,
		AppPort:        ac.AppPort,
		AppHealth:      ac.AppHealth,
		AppProtocol:    a.registeredProtocol(ac),
		HealthInterval: ac.HealthInterval,
		Tags:           slices.Clone(ac.Tags),
		Meta:           a.registrationMeta(c),
		Locality:       ac.Locality,
	}
}

// registrar runs the Consul registration and replaces it when a reload
// changes what is registered: the old Run is stopped (never deregistered:
// the new one has the same ID) and a new one writes the new entry.
type registrar struct {
	a      *Agent
	parent context.Context

	mu      sync.Mutex
	spec    registration.Spec
	current *registration.Registrar
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

func newRegistrar(ctx context.Context, a *Agent, spec registration.Spec) *registrar {
	r := &registrar{a: a, parent: ctx}
	r.startLocked(spec)
	return r
}

func (r *registrar) startLocked(spec registration.Spec) {
	ctx, cancel := context.WithCancel(r.parent)
	reg := registration.New(r.a.consul, spec, r.a.config().Agent.ResyncInterval, r.a.base).WithMetrics(r.a.obs.Metrics())
	if r.current != nil {
		reg.Replaces(r.current)
	}
	done := make(chan error, 1)
	go func() {
		if err := r.a.awaitCertificate(ctx); err != nil {
			done <- nil // stopped before it could register
			return
		}
		done <- reg.Run(ctx)
	}()
	r.spec, r.current, r.cancel, r.done = spec, reg, cancel, done
}

func (r *registrar) update(spec registration.Spec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped || reflect.DeepEqual(spec, r.spec) {
		return
	}
	r.cancel()
	<-r.done
	r.a.log.Info().Strs("tags", spec.Tags).Str("health", spec.AppHealth).Msg("registration changed by reload; re-registering")
	r.startLocked(spec)
}

func (r *registrar) registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current.Registered()
}

// err is the registration's last failed Consul call, nil after a success.
func (r *registrar) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current.Err()
}

func (r *registrar) id() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current.ID()
}

// deregister removes the registration for good (shutdown).
func (r *registrar) deregister(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	return r.current.Deregister(ctx)
}

// wait stops the registration loop and waits for it.
func (r *registrar) wait() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cancel()
	<-r.done
}

// ReloadFrom re-reads the config with load and applies it, telling
// systemd (RELOADING=1, then READY=1 with a STATUS line) and the metrics
// how it went. A config that does not load or apply is reported and the
// running one stays.
func (a *Agent) ReloadFrom(_ context.Context, load func() (*config.Config, error)) error {
	_ = sdnotify.Reloading()
	defer func() { _ = sdnotify.Ready() }()
	err := func() error {
		next, err := load()
		if err != nil {
			return err
		}
		needRestart, err := a.Reload(*next)
		if err != nil {
			return err
		}
		if level, err := zerolog.ParseLevel(next.Log.Level); err == nil {
			zerolog.SetGlobalLevel(level)
		}
		if len(needRestart) > 0 {
			a.log.Warn().Strs("settings", needRestart).Msg("config reloaded, but these changed settings need a restart to take effect; their running values are kept")
			_ = sdnotify.Status("config reloaded; restart needed for " + strings.Join(needRestart, ", "))
		} else {
			a.log.Info().Msg("config reloaded")
			_ = sdnotify.Status("ready (config reloaded)")
		}
		return nil
	}()
	if err != nil {
		a.reloads.WithLabelValues("error").Inc()
		a.log.Error().Err(err).Msg("config reload failed; the running config stays")
		_ = sdnotify.Status("config reload failed, running config kept: " + err.Error())
		return err
	}
	a.reloads.WithLabelValues("ok").Inc()
	return nil
}
