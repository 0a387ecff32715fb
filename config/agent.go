package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/meshvm/mesh/wire"
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
	// AppProtocol is what the app speaks: http1, http2 (h2c), grpc, tcp,
	// or auto (probe h2c with prior knowledge, else HTTP/1.1). It is
	// registered in Consul meta (MetaAppProtocol) so callers' agents send
	// what the app understands; with tcp the inbound listener relays raw
	// TCP.
	AppProtocol string `mapstructure:"app_protocol" yaml:"app_protocol"`

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
	// JoinTokenFile holds the join token (`mesh control token create`)
	// the agent presents for its first certificate; setting it gives the
	// agent a workload identity. Once it holds a certificate it renews
	// with it, so the token may expire or be removed.
	JoinTokenFile string `mapstructure:"join_token_file" yaml:"join_token_file,omitempty"`
	// IdentityCredential is what the agent presents for its first
	// certificate: "" (a join token, when JoinTokenFile is set) or
	// IdentityCredentialConsulToken (its Consul ACL token, consul.token,
	// which mesh control verifies against Consul: service:write on
	// Service, as Consul Connect authorizes a sidecar's certificate).
	IdentityCredential string `mapstructure:"identity_credential" yaml:"identity_credential,omitempty"`
	// ControlPlaneCAFile, when set, is the trust bundle (PEM) the agent
	// verifies mesh control's TLS certificate against before it has a
	// bundle of its own; without it, the join token's CA hashes pin it.
	ControlPlaneCAFile string `mapstructure:"control_plane_ca_file" yaml:"control_plane_ca_file,omitempty"`
	// IdentityDir caches the agent's certificate, key (0600) and trust
	// bundle across restarts; empty means <cache_dir>/identity/<service>.
	IdentityDir string `mapstructure:"identity_dir" yaml:"identity_dir,omitempty"`

	Tags []string          `mapstructure:"tags" yaml:"tags"`
	Meta map[string]string `mapstructure:"meta" yaml:"meta"`

	// Upstreams are local listeners that send everything to one service,
	// for clients that cannot set a Host or :authority.
	Upstreams []Upstream `mapstructure:"upstreams" yaml:"upstreams"`
	// Dependencies are services the app calls through the outbound
	// listener: with a control plane the agent subscribes to them (and to
	// its upstreams) from the start and never drops them; any other
	// service is fetched on demand (OnDemand).
	Dependencies []string `mapstructure:"dependencies" yaml:"dependencies"`
	// OnDemand is how the agent fetches a service it meets for the first
	// time on the request path, and forgets it.
	OnDemand OnDemand `mapstructure:"on_demand" yaml:"on_demand"`

	// TLS is the agent's workload identity from files (mTLS between
	// agents).
	TLS AgentTLS `mapstructure:"tls" yaml:"tls"`

	// Locality of this VM, used for zone-aware load balancing.
	Locality Locality `mapstructure:"locality" yaml:"locality"`

	// DrainPeriod is how long the agent keeps serving after deregistering
	// on SIGTERM, so callers learn it is gone before it stops accepting.
	DrainPeriod time.Duration `mapstructure:"drain_period" yaml:"drain_period"`
	// ShutdownTimeout bounds how long in-flight requests may take to finish.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`
	// TCPIdleTimeout closes a relayed TCP connection (tcp upstreams, the
	// inbound side of a tcp app) that carried no byte either way this long
	// (default 1h).
	TCPIdleTimeout time.Duration `mapstructure:"tcp_idle_timeout" yaml:"tcp_idle_timeout"`
	// ResyncInterval is how often the agent checks that Consul still holds
	// its registration (at least 100ms).
	ResyncInterval time.Duration `mapstructure:"resync_interval" yaml:"resync_interval" min:"100ms"`
	// Interception is transparent interception (interception.go).
	Interception Interception `mapstructure:"interception" yaml:"interception"`
}

// OnDemand configures on-demand subscriptions (agents with a control
// plane): a request to a service the agent does not hold waits up to
// Timeout for it; a service that did not arrive answers 503 no-route
// without waiting again for NegativeTTL; a service fetched on demand and
// not called for Idle is dropped (0: never).
type OnDemand struct {
	Timeout     time.Duration `mapstructure:"timeout" yaml:"timeout"`
	NegativeTTL time.Duration `mapstructure:"negative_ttl" yaml:"negative_ttl"`
	Idle        time.Duration `mapstructure:"idle" yaml:"idle"`
}

// Upstream is one per-upstream local listener. On the command line and in
// YAML it may also be written as "service=host:port[,protocol]".
type Upstream struct {
	Service string `mapstructure:"service" yaml:"service"`
	Listen  string `mapstructure:"listen" yaml:"listen"`
	// Protocol is "http" (the default: HTTP/1.1 and h2c, governed per
	// request) or "tcp" (a raw TCP relay, balanced per connection).
	Protocol string `mapstructure:"protocol" yaml:"protocol,omitempty"`
}

// IdentityCredentialConsulToken is agent.identity_credential's value for
// the agent's Consul ACL token (consul.token) as its credential.
const IdentityCredentialConsulToken = "consul_token"

// HasIdentity reports whether the agent gets a workload identity from
// mesh control (a join token, or its Consul ACL token).
func (a Agent) HasIdentity() bool {
	return a.JoinTokenFile != "" || a.IdentityCredential == IdentityCredentialConsulToken
}

// App protocols (agent.app_protocol, and the MetaAppProtocol value).
const (
	AppProtocolAuto  = "auto"
	AppProtocolHTTP1 = "http1"
	AppProtocolHTTP2 = "http2"
	AppProtocolGRPC  = "grpc"
	AppProtocolTCP   = "tcp"
)

// Upstream listener protocols (agent.upstreams[].protocol).
const (
	UpstreamHTTP = "http"
	UpstreamTCP  = "tcp"
)

// MetaAppProtocol is the Consul service meta key under which an agent
// registers its app's protocol (agent.app_protocol); callers' agents and
// the control plane read it (the control plane sets the Cluster's
// protocol options from it).
const MetaAppProtocol = wire.MetaAppProtocol

// IsTCP reports whether u is a raw TCP listener.
func (u Upstream) IsTCP() bool { return u.Protocol == UpstreamTCP }

// Locality places a VM in a region and zone.
type Locality struct {
	Region string `mapstructure:"region" yaml:"region,omitempty"`
	Zone   string `mapstructure:"zone" yaml:"zone,omitempty"`
}

// ParseUpstream parses "service=host:port[,protocol]".
func ParseUpstream(s string) (Upstream, error) {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return Upstream{}, fmt.Errorf("%q is not SERVICE=HOST:PORT[,PROTOCOL]", s)
	}
	u := Upstream{Service: strings.TrimSpace(name), Listen: strings.TrimSpace(addr)}
	if listen, proto, ok := strings.Cut(u.Listen, ","); ok {
		u.Listen, u.Protocol = strings.TrimSpace(listen), strings.TrimSpace(proto)
	}
	return u, nil
}

func (a *Agent) validate(v *validator, requireService bool, consulToken string) {
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
	switch a.AppProtocol {
	case "", AppProtocolAuto, AppProtocolHTTP1, AppProtocolHTTP2, AppProtocolGRPC:
	case AppProtocolTCP:
		v.check("agent.app_health", a.AppHealth == "", "must be empty for app_protocol tcp (the app is checked by TCP connect), got %q", a.AppHealth)
	default:
		v.add("agent.app_protocol", "must be one of auto, http1, http2, grpc, tcp, got %q", a.AppProtocol)
	}
	v.hostPort("agent.inbound_addr", a.InboundAddr)
	v.hostPort("agent.outbound_addr", a.OutboundAddr)
	v.hostPort("agent.admin_addr", a.AdminAddr)
	if a.AdvertiseAddr != "" {
		v.ip("agent.advertise_addr", a.AdvertiseAddr)
	}
	for i, cp := range a.ControlPlane {
		v.hostPort(fmt.Sprintf("agent.control_plane[%d]", i), cp)
	}
	v.check("agent.join_token_file", a.JoinTokenFile == "" || len(a.ControlPlane) > 0,
		"needs agent.control_plane: certificates are issued by mesh control")
	v.check("agent.join_token_file", a.JoinTokenFile == "" || !a.TLS.On(),
		"and agent.tls are two sources of the agent's identity; set one (files from your own PKI, or a join token for mesh control's CA)")
	switch a.IdentityCredential {
	case "":
	case IdentityCredentialConsulToken:
		v.check("agent.identity_credential", a.JoinTokenFile == "",
			"is consul_token, and agent.join_token_file is set too: the agent presents one credential; remove one")
		v.check("agent.identity_credential", len(a.ControlPlane) > 0, "needs agent.control_plane: certificates are issued by mesh control")
		v.check("agent.identity_credential", consulToken != "", "is consul_token but no Consul ACL token is set (consul.token, MESH_CONSUL_TOKEN or CONSUL_HTTP_TOKEN)")
		v.check("agent.identity_credential", a.ControlPlaneCAFile != "",
			"is consul_token: set agent.control_plane_ca_file (mesh control's bundle.crt), since a Consul token pins no CA and is never sent to an unverified server")
		v.check("agent.identity_credential", !a.TLS.On(),
			"and agent.tls are two sources of the agent's identity; set one")
	default:
		v.add("agent.identity_credential", "must be empty (a join token from agent.join_token_file) or consul_token, got %q", a.IdentityCredential)
	}
	seen := map[string]string{
		a.InboundAddr:  "agent.inbound_addr",
		a.OutboundAddr: "agent.outbound_addr",
		a.AdminAddr:    "agent.admin_addr",
	}
	for i, u := range a.Upstreams {
		path := fmt.Sprintf("agent.upstreams[%d]", i)
		v.meshServiceName(path+".service", u.Service)
		v.check(path+".protocol", u.Protocol == "" || u.Protocol == UpstreamHTTP || u.Protocol == UpstreamTCP,
			"must be http or tcp, got %q", u.Protocol)
		if v.hostPort(path+".listen", u.Listen) {
			if other, dup := seen[u.Listen]; dup {
				v.add(path+".listen", "%s is already used by %s", u.Listen, other)
			}
			seen[u.Listen] = path + ".listen"
		}
	}
	for i, d := range a.Dependencies {
		v.meshServiceName(fmt.Sprintf("agent.dependencies[%d]", i), d)
	}
	v.positive("agent.on_demand.timeout", a.OnDemand.Timeout)
	v.nonNegative("agent.on_demand.negative_ttl", a.OnDemand.NegativeTTL)
	v.nonNegative("agent.on_demand.idle", a.OnDemand.Idle)
	v.nonNegative("agent.drain_period", a.DrainPeriod)
	v.positive("agent.shutdown_timeout", a.ShutdownTimeout)
	v.positive("agent.resync_interval", a.ResyncInterval)
	v.nonNegative("agent.tcp_idle_timeout", a.TCPIdleTimeout)
	a.TLS.validate(v)
	a.Interception.validate(v)
}
