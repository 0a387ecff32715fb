// Package registration registers the agent's app in the local Consul agent
// on the app's behalf, keeps that registration in place for as long as the
// agent runs (restoring it when Consul forgets it), and removes it first on
// shutdown.
//
// What Consul holds for one app instance:
//   - ID "<service>-<node>-<app port>": stable across restarts, unique per VM
//     and app port, so a restarted agent replaces its own entry;
//   - Address/Port: the agent's inbound listener, not the app, so callers
//     always go through the callee's agent;
//   - a health check on the app itself (HTTP GET on its health path, or TCP);
//   - meta: the user's meta plus the wire contract's keys (wire.MetaAppPort,
//     wire.MetaVersion, ...), which discovery and the control plane read
//     back.
package registration

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/wire"
)

// Defaults used when the Spec or New leave a duration at zero.
const (
	DefaultResync         = 5 * time.Second
	DefaultHealthInterval = 10 * time.Second
	// maxCheckTimeout bounds a single health probe of the app.
	maxCheckTimeout = 5 * time.Second
	// minBackoff is the first wait after a failed Consul call; waits double
	// up to the resync interval, with jitter.
	minBackoff = 200 * time.Millisecond
)

// Spec is what to register.
type Spec struct {
	Service string
	// Node is the VM name; it is part of the ID.
	Node string

	// AdvertiseAddr and InboundPort are the agent's inbound listener as
	// other VMs reach it: the address Consul hands to callers.
	AdvertiseAddr string
	InboundPort   int

	// AppAddress and AppPort are where the app listens on this VM. The
	// health check probes http://AppAddress:AppPort/AppHealth when
	// AppHealth is set, else it opens a TCP connection to AppAddress:AppPort.
	AppAddress     string
	AppPort        int
	AppHealth      string
	HealthInterval time.Duration
	// AppProtocol is what the app speaks (config.AppProtocol*), registered
	// as config.MetaAppProtocol; empty registers "auto".
	AppProtocol string

	Tags []string
	Meta map[string]string

	Locality config.Locality

	// CheckInbound adds a second check, TCP on AdvertiseAddr:InboundPort,
	// so that an instance whose agent died (while its app lives on) leaves
	// the healthy set too. Off by default: it needs the inbound listener up
	// before the instance can pass.
	CheckInbound bool
}

// ID is the Consul service ID for spec: "<service>-<node>-<app port>".
func (s Spec) ID() string {
	return s.Service + "-" + s.Node + "-" + strconv.Itoa(s.AppPort)
}

// Registration builds the Consul registration for the spec. It is pure:
// the same spec gives the same registration.
func (s Spec) Registration() *consulapi.AgentServiceRegistration {
	id := s.ID()
	meta := make(map[string]string, len(s.Meta)+6)
	maps.Copy(meta, s.Meta)
	meta[wire.MetaAppPort] = strconv.Itoa(s.AppPort)
	meta[wire.MetaVersion] = buildinfo.Version
	meta[config.MetaAppProtocol] = cmp.Or(s.AppProtocol, config.AppProtocolAuto)
	if s.Node != "" {
		meta[wire.MetaNode] = s.Node
	}
	if s.Locality.Zone != "" {
		meta[wire.MetaZone] = s.Locality.Zone
	}
	if s.Locality.Region != "" {
		meta[wire.MetaRegion] = s.Locality.Region
	}

	interval := s.HealthInterval
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	timeout := min(interval, maxCheckTimeout)
	app := net.JoinHostPort(s.AppAddress, strconv.Itoa(s.AppPort))
	check := &consulapi.AgentServiceCheck{
		CheckID:  id + ":app",
		Interval: interval.String(),
		Timeout:  timeout.String(),
	}
	if s.AppHealth != "" {
		meta[wire.MetaHealthCheck] = wire.HealthCheckHTTP
		check.Name = "app HTTP " + s.AppHealth
		check.HTTP = "http://" + app + s.AppHealth
		check.Method = http.MethodGet
	} else {
		meta[wire.MetaHealthCheck] = wire.HealthCheckTCP
		check.Name = "app TCP"
		check.TCP = app
	}
	checks := consulapi.AgentServiceChecks{check}
	if s.CheckInbound {
		checks = append(checks, &consulapi.AgentServiceCheck{
			CheckID:  id + ":inbound",
			Name:     "mesh agent inbound TCP",
			TCP:      net.JoinHostPort(s.AdvertiseAddr, strconv.Itoa(s.InboundPort)),
			Interval: interval.String(),
			Timeout:  timeout.String(),
		})
	}
	return &consulapi.AgentServiceRegistration{
		ID:      id,
		Name:    s.Service,
		Tags:    slices.Clone(s.Tags),
		Address: s.AdvertiseAddr,
		Port:    s.InboundPort,
		Meta:    meta,
		Checks:  checks,
	}
}

// Registrar keeps one app instance registered in the local Consul agent.
type Registrar struct {
	client *consulapi.Client
	reg    *consulapi.AgentServiceRegistration
	resync time.Duration
	log    zerolog.Logger

	registered atomic.Bool
	// wrote is set once a write may have reached Consul (it succeeded, or
	// failed after it was sent); inherited when r took over an entry
	// another registrar may have written (Replaces).
	wrote     atomic.Bool
	inherited bool
	// lastErr is the last failed Consul call, nil after a success.
	lastErr atomic.Pointer[error]
	metrics Metrics

	// mu serialises Consul writes: a registration in flight finishes (or
	// is cancelled) before Deregister removes it, so it cannot resurrect.
	mu sync.Mutex
	// stop is cancelled by Deregister; Run's calls use a context that is
	// also cancelled by it.
	stop       context.Context
	cancelStop context.CancelFunc
}

// New returns a registrar for spec; it talks to Consul only in Run and
// Deregister. resync is how often Run checks that Consul still holds the
// registration (0 means DefaultResync). The client carries the address and
// token (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...).
func New(client *consulapi.Client, spec Spec, resync time.Duration, log zerolog.Logger) *Registrar {
	if resync <= 0 {
		resync = DefaultResync
	}
	stop, cancel := context.WithCancel(context.Background())
	r := &Registrar{
		client:     client,
		reg:        spec.Registration(),
		resync:     resync,
		stop:       stop,
		cancelStop: cancel,
		metrics:    noMetrics{},
	}
	r.log = log.With().Str("component", "registration").Str("service_id", r.reg.ID).Logger()
	return r
}

// Metrics is where a Registrar reports its state
// (observability.Metrics implements it).
type Metrics interface {
	// ConsulRegistered records whether Consul holds the registration.
	ConsulRegistered(ok bool)
	// ConsulRegistrationFailed counts one failed (re-)registration.
	ConsulRegistrationFailed()
}

type noMetrics struct{}

func (noMetrics) ConsulRegistered(bool)     {}
func (noMetrics) ConsulRegistrationFailed() {}

// WithMetrics makes r report its state to m; call it before Run. It
// returns r.
func (r *Registrar) WithMetrics(m Metrics) *Registrar {
	r.metrics = m
	return r
}

// setRegistered records whether Consul holds the registration, and
// returns the previous value.
func (r *Registrar) setRegistered(ok bool) bool {
	r.metrics.ConsulRegistered(ok)
	return r.registered.Swap(ok)
}

// ID is the Consul service ID.
func (r *Registrar) ID() string { return r.reg.ID }

// Replaces tells r that it takes over prev's entry (a reload re-registers
// under the same ID): Deregister then removes it even if r itself never
// managed to write. Call it before Run, once prev has stopped; it returns r.
func (r *Registrar) Replaces(prev *Registrar) *Registrar {
	r.inherited = prev.everWrote()
	return r
}

// everWrote reports whether r, or a registrar it replaces, ever wrote its
// entry to Consul.
func (r *Registrar) everWrote() bool { return r.inherited || r.wrote.Load() }

// Err is the last failed Consul call of Run, nil once one succeeds again.
func (r *Registrar) Err() error {
	if p := r.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Registered reports whether the registration is known to be in Consul:
// true from the first successful registration, false once a resync finds
// it missing or after Deregister. While Consul cannot be reached it keeps
// its last value: an unreachable Consul does not mean the entry is gone.
func (r *Registrar) Registered() bool { return r.registered.Load() }

// Run registers the service, then every resync interval checks that the
// local Consul agent still holds it and registers it again if not (Consul
// restarted without its data, or someone deregistered it). Failed Consul
// calls are logged and retried forever with jittered exponential backoff
// capped at the resync interval. Run returns nil when ctx is done or
// after Deregister; it never deregisters by itself.
func (r *Registrar) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(r.stop, cancel)()

	backoff := minBackoff
	failing := false
	first := true
	for {
		wait := r.resync
		var err error
		if first {
			// Always write once: Consul may hold an older registration
			// under the same ID (a previous run with other ports or tags).
			err = r.register(ctx)
			first = err != nil
		} else {
			err = r.sync(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.metrics.ConsulRegistrationFailed()
			r.lastErr.Store(&err)
			if !failing {
				r.log.Warn().Err(err).Msg("consul registration failing, retrying")
			} else {
				r.log.Debug().Err(err).Dur("backoff", backoff).Msg("consul registration still failing")
			}
			failing = true
			wait = jitter(backoff)
			backoff = min(backoff*2, r.resync)
		} else {
			if failing {
				r.log.Info().Msg("consul registration recovered")
			}
			r.lastErr.Store(nil)
			failing = false
			backoff = minBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// sync makes sure Consul holds the registration as written.
func (r *Registrar) sync(ctx context.Context) error {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	svc, _, err := r.client.Agent().Service(r.reg.ID, q)
	var se consulapi.StatusError
	switch {
	case err == nil && svc != nil && r.matches(svc):
		r.setRegistered(true)
		return nil
	case err == nil && svc != nil:
		r.log.Warn().Msg("consul holds a different registration under this ID, registering again")
	case err == nil || errors.As(err, &se) && se.Code == http.StatusNotFound:
		if r.setRegistered(false) {
			r.log.Warn().Msg("consul lost the registration, registering again")
		}
	default:
		return fmt.Errorf("look up registration %s: %w", r.reg.ID, err)
	}
	return r.register(ctx)
}

// matches reports whether svc is what r registers (checks aside: every
// registration replaces them).
func (r *Registrar) matches(svc *consulapi.AgentService) bool {
	return svc.ID == r.reg.ID && svc.Service == r.reg.Name && svc.Address == r.reg.Address &&
		svc.Port == r.reg.Port && slices.Equal(svc.Tags, r.reg.Tags) && maps.Equal(svc.Meta, r.reg.Meta)
}

func (r *Registrar) register(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop.Err() != nil || ctx.Err() != nil {
		return ctx.Err()
	}
	opts := consulapi.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(r.reg, opts); err != nil {
		if !neverSent(err) {
			r.wrote.Store(true) // cut off after sending: Consul may hold it
		}
		return fmt.Errorf("register %s: %w", r.reg.ID, err)
	}
	r.setRegistered(true)
	r.wrote.Store(true)
	r.log.Info().Str("address", r.reg.Address).Int("port", r.reg.Port).Msg("registered in consul")
	return nil
}

// Deregister removes the registration and stops Run from restoring it,
// whether or not Run's context is still alive. It is meant to be called
// first on shutdown, before draining. Deregistering a service Consul does
// not hold is not an error; a registration that was never written (Consul
// was unreachable all along) is not deregistered at all.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.cancelStop()
	r.mu.Lock() // wait for a registration in flight
	defer r.mu.Unlock()
	r.setRegistered(false)
	if !r.everWrote() {
		r.log.Info().Msg("never registered in consul; nothing to deregister")
		return nil
	}
	err := r.client.Agent().ServiceDeregisterOpts(r.reg.ID, (&consulapi.QueryOptions{}).WithContext(ctx))
	var se consulapi.StatusError
	if err != nil && !(errors.As(err, &se) && se.Code == http.StatusNotFound) {
		return fmt.Errorf("deregister %s: %w", r.reg.ID, err)
	}
	r.log.Info().Msg("deregistered from consul")
	return nil
}

// neverSent reports whether a failed registration certainly wrote
// nothing: the connection to Consul was never made, or Consul answered
// with an error.
func neverSent(err error) bool {
	if se, ok := errors.AsType[consulapi.StatusError](err); ok {
		return se.Code != 0
	}
	if op, ok := errors.AsType[*net.OpError](err); ok {
		return op.Op == "dial"
	}
	return false
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}
