package config

import (
	"fmt"
	"strings"
	"time"
)

// Agent configures `mesh agent`, the per-app sidecar.
type Agent struct {
	// Service is the name the app is registered under and called by.
	Service string `mapstructure:"service" yaml:"service"`
	// AppPort is the app's port on AppAddress; inbound traffic goes there.
	AppPort int `mapstructure:"app_port" yaml:"app_port"`
	// AppAddress is where the app listens (default 127.0.0.1).
	AppAddress string `mapstructure:"app_address" yaml:"app_address"`
	// AppHealth is an HTTP path checked on the app; empty means a TCP check.
	AppHealth string `mapstructure:"app_health" yaml:"app_health"`
	// HealthInterval is how often Consul checks the app (at least 1s, as
	// Consul checks no more often).
	HealthInterval time.Duration `mapstructure:"health_interval" yaml:"health_interval" min:"1s"`

	InboundAddr  string `mapstructure:"inbound_addr" yaml:"inbound_addr"`
	OutboundAddr string `mapstructure:"outbound_addr" yaml:"outbound_addr"`
	AdminAddr    string `mapstructure:"admin_addr" yaml:"admin_addr"`
	// AdvertiseAddr is the IP other agents reach this one on. Empty means
	// the inbound listener's host, or the first non-loopback address.
	AdvertiseAddr string `mapstructure:"advertise_addr" yaml:"advertise_addr"`
	// Node names this VM; empty means the hostname.
	Node string `mapstructure:"node" yaml:"node"`

	// ControlPlane lists xDS servers (host:port). Empty means the agent
	// discovers endpoints straight from Consul.
	ControlPlane []string `mapstructure:"control_plane" yaml:"control_plane"`
	// CacheDir holds state that must survive a restart (last good xDS config).
	CacheDir string `mapstructure:"cache_dir" yaml:"cache_dir"`

	Tags []string          `mapstructure:"tags" yaml:"tags"`
	Meta map[string]string `mapstructure:"meta" yaml:"meta"`

	// Upstreams are local listeners that send everything to one service,
	// for clients that cannot set a Host or :authority.
	Upstreams []Upstream `mapstructure:"upstreams" yaml:"upstreams"`

	// Locality of this VM, used for zone-aware load balancing.
	Locality Locality `mapstructure:"locality" yaml:"locality"`

	// DrainPeriod is how long the agent keeps serving after deregistering
	// on SIGTERM, so callers learn it is gone before it stops accepting.
	DrainPeriod time.Duration `mapstructure:"drain_period" yaml:"drain_period"`
	// ShutdownTimeout bounds how long in-flight requests may take to finish.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`
	// ResyncInterval is how often the agent checks that Consul still holds
	// its registration (at least 100ms).
	ResyncInterval time.Duration `mapstructure:"resync_interval" yaml:"resync_interval" min:"100ms"`
}

// Upstream is one per-upstream local listener. On the command line and in
// YAML it may also be written as "service=host:port".
type Upstream struct {
	Service string `mapstructure:"service" yaml:"service"`
	Listen  string `mapstructure:"listen" yaml:"listen"`
}

// Locality places a VM in a region and zone.
type Locality struct {
	Region string `mapstructure:"region" yaml:"region,omitempty"`
	Zone   string `mapstructure:"zone" yaml:"zone,omitempty"`
}

// ParseUpstream parses "service=host:port".
func ParseUpstream(s string) (Upstream, error) {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return Upstream{}, fmt.Errorf("%q is not SERVICE=HOST:PORT", s)
	}
	return Upstream{Service: strings.TrimSpace(name), Listen: strings.TrimSpace(addr)}, nil
}

func (a *Agent) validate(v *validator, requireService bool) {
	if requireService || a.Service != "" || a.AppPort != 0 {
		v.check("agent.service", a.Service != "", "is required")
		if v.check("agent.app_port", a.AppPort != 0, "is required") {
			v.check("agent.app_port", a.AppPort > 0 && a.AppPort < 65536, "must be a port between 1 and 65535, got %d; write e.g. 8080", a.AppPort)
		}
	}
	if a.Service != "" {
		v.serviceName("agent.service", a.Service)
	}
	v.host("agent.app_address", a.AppAddress)
	if a.AppHealth != "" {
		v.check("agent.app_health", strings.HasPrefix(a.AppHealth, "/"), "must be an HTTP path starting with /, got %q; write e.g. /healthz", a.AppHealth)
	}
	v.positive("agent.health_interval", a.HealthInterval)
	v.hostPort("agent.inbound_addr", a.InboundAddr)
	v.hostPort("agent.outbound_addr", a.OutboundAddr)
	v.hostPort("agent.admin_addr", a.AdminAddr)
	if a.AdvertiseAddr != "" {
		v.ip("agent.advertise_addr", a.AdvertiseAddr)
	}
	for i, cp := range a.ControlPlane {
		v.hostPort(fmt.Sprintf("agent.control_plane[%d]", i), cp)
	}
	seen := map[string]string{
		a.InboundAddr:  "agent.inbound_addr",
		a.OutboundAddr: "agent.outbound_addr",
		a.AdminAddr:    "agent.admin_addr",
	}
	for i, u := range a.Upstreams {
		path := fmt.Sprintf("agent.upstreams[%d]", i)
		v.serviceName(path+".service", u.Service)
		if v.hostPort(path+".listen", u.Listen) {
			if other, dup := seen[u.Listen]; dup {
				v.add(path+".listen", "%s is already used by %s", u.Listen, other)
			}
			seen[u.Listen] = path + ".listen"
		}
	}
	v.nonNegative("agent.drain_period", a.DrainPeriod)
	v.positive("agent.shutdown_timeout", a.ShutdownTimeout)
	v.positive("agent.resync_interval", a.ResyncInterval)
}
