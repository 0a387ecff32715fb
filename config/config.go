// Package config is mesh's one configuration schema, shared by every role
// (agent, control plane, and later the gateway). A config is assembled from
// defaults, a YAML file (snake_case keys), MESH_* environment variables and
// command-line flags, in that order of precedence, then validated. Errors
// name the file, the line where it is known, and the field path.
package config

import (
	"time"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Config is the whole schema. Each role reads the sections it needs.
type Config struct {
	Log      Log      `mapstructure:"log" yaml:"log"`
	Consul   Consul   `mapstructure:"consul" yaml:"consul"`
	Agent    Agent    `mapstructure:"agent" yaml:"agent"`
	Control  Control  `mapstructure:"control" yaml:"control"`
	Gateway  Gateway  `mapstructure:"gateway" yaml:"gateway"`
	Policies Policies `mapstructure:"policies" yaml:"policies"`
	// Observability configures access logs and tracing.
	Observability Observability `mapstructure:"observability" yaml:"observability"`
}

// Log configures the process's own logs (not access logs).
type Log struct {
	// Level is one of trace, debug, info, warn, error.
	Level string `mapstructure:"level" yaml:"level"`
	// Format is json (for journald and log shippers) or text (for a terminal).
	Format string `mapstructure:"format" yaml:"format"`
}

// Consul says how to reach the local Consul agent. CONSUL_HTTP_ADDR and
// CONSUL_HTTP_TOKEN are honoured as Consul's own tools do.
type Consul struct {
	Addr       string `mapstructure:"addr" yaml:"addr"`
	Token      string `mapstructure:"token" yaml:"token,omitempty" secret:"true"`
	Datacenter string `mapstructure:"datacenter" yaml:"datacenter,omitempty"`
}

// Default returns the configuration every role starts from before the file,
// the environment and flags are applied.
func Default() Config {
	return Config{
		Log:    Log{Level: "info", Format: "json"},
		Consul: Consul{Addr: "127.0.0.1:8500"},
		Agent: Agent{
			AppAddress:      "127.0.0.1",
			AppProtocol:     AppProtocolAuto,
			InboundAddr:     wire.DefaultInboundAddr,
			OutboundAddr:    wire.DefaultOutboundAddr,
			AdminAddr:       "127.0.0.1:15000",
			CacheDir:        "/var/lib/mesh",
			DrainPeriod:     5 * time.Second,
			ShutdownTimeout: 30 * time.Second,
			HealthInterval:  5 * time.Second,
			ResyncInterval:  5 * time.Second,
			TCPIdleTimeout:  time.Hour,
			Tags:            []string{},
			Meta:            map[string]string{},
			Upstreams:       []Upstream{},
			Dependencies:    []string{},
			OnDemand:        OnDemand{Timeout: 5 * time.Second, NegativeTTL: 10 * time.Second, Idle: 10 * time.Minute},
			ControlPlane:    []string{},
			TLS:             AgentTLS{PeerIdentityHeader: wire.PeerIdentityHeader},
			Interception:    DefaultInterception(),
		},
		Control: Control{
			XDSAddr:   "0.0.0.0:18000",
			AdminAddr: "127.0.0.1:19000",
			Debounce:  100 * time.Millisecond,
			// LRS: Envoy's examples and Istio's use 10s.
			LoadReportingInterval: 10 * time.Second,
			CA: CA{
				Dir:         "/var/lib/mesh/ca",
				TrustDomain: identity.DefaultTrustDomain,
				Namespace:   identity.DefaultNamespace,
				CertTTL:     24 * time.Hour,
			},
			XDS: XDS{Auth: "optional", TLSSANs: []string{}},
			CMDB: CMDB{
				Interval:         30 * time.Second,
				Format:           "generic",
				Timeout:          10 * time.Second,
				MaxBytes:         32 << 20,
				DrainingStatuses: []string{"offline", "failed", "decommissioning"},
				Fields: CMDBFields{
					IP:       "ip",
					Hostname: "hostname",
					Region:   "region",
					Zone:     "zone",
					Env:      "env",
					Owner:    "owner",
					Status:   "status",
					Labels:   "labels",
				},
			},
			Kubernetes: Kubernetes{Namespaces: []string{}, Nodes: true},
			MTLS:       MTLS{DefaultMode: wire.MTLSPermissive},
			Services:   map[string]ServiceSettings{},

			Authorization: []Authorization{},
			VirtualIPs:    VirtualIPs{CIDR: DefaultVirtualIPCIDR},
		},
		Gateway: DefaultGateway(),
		Policies: Policies{
			Default:  DefaultPolicy(),
			Services: map[string]Policy{},
		},
		Observability: DefaultObservability(),
	}
}
