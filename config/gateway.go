package config

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/meshvm/mesh/wire"
)

// Gateway is what `mesh gateway` reads on its own VM: its listeners, how
// it reaches the control plane, its certificates and its edge limits.
// Routes and authentication are not here: they live in mesh control's
// file (control.gateway) and arrive over xDS.
type Gateway struct {
	// Name is the service the gateway registers in Consul under (with
	// meta mesh_kind=gateway) and its identity's service name.
	Name      string `mapstructure:"name" yaml:"name"`
	HTTPSAddr string `mapstructure:"https_addr" yaml:"https_addr"`
	// HTTPAddr redirects to HTTPS (unless a route says otherwise) and
	// answers ACME HTTP-01 challenges; empty: no HTTP listener.
	HTTPAddr      string   `mapstructure:"http_addr" yaml:"http_addr"`
	AdminAddr     string   `mapstructure:"admin_addr" yaml:"admin_addr"`
	AdvertiseAddr string   `mapstructure:"advertise_addr" yaml:"advertise_addr,omitempty"`
	ControlPlane  []string `mapstructure:"control_plane" yaml:"control_plane"`
	JoinTokenFile string   `mapstructure:"join_token_file" yaml:"join_token_file,omitempty"`
	Node          string   `mapstructure:"node" yaml:"node,omitempty"`
	// CacheDir keeps the last good control-plane config and ACME state.
	CacheDir        string        `mapstructure:"cache_dir" yaml:"cache_dir"`
	DrainPeriod     time.Duration `mapstructure:"drain_period" yaml:"drain_period"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`
	TLS             GatewayTLS    `mapstructure:"tls" yaml:"tls"`
	Limits          GatewayLimits `mapstructure:"limits" yaml:"limits"`
}

// GatewayTLS is the edge's TLS: certificate files chosen by SNI, ACME,
// and optional client-certificate verification per host.
type GatewayTLS struct {
	Certificates []CertificateFiles `mapstructure:"certificates" yaml:"certificates"`
	ACME         GatewayACME        `mapstructure:"acme" yaml:"acme"`
	// ClientCA verifies client certificates for the hosts named (exact
	// or *.wildcard); other hosts ask for none.
	ClientCA []ClientCA `mapstructure:"client_ca" yaml:"client_ca"`
	// ReloadInterval is how often certificate files are checked for
	// changes.
	ReloadInterval time.Duration `mapstructure:"reload_interval" yaml:"reload_interval" min:"100ms"`
}

// CertificateFiles is one certificate chain and its key (PEM).
type CertificateFiles struct {
	CertFile string `mapstructure:"cert_file" yaml:"cert_file"`
	KeyFile  string `mapstructure:"key_file" yaml:"key_file"`
}

// GatewayACME gets certificates automatically (RFC 8555).
type GatewayACME struct {
	Enabled   bool     `mapstructure:"enabled" yaml:"enabled"`
	Directory string   `mapstructure:"directory" yaml:"directory"`
	Email     string   `mapstructure:"email" yaml:"email"`
	Hosts     []string `mapstructure:"hosts" yaml:"hosts"`
	// CAFile is a PEM bundle the ACME server's certificate is checked
	// against instead of the system roots (a private ACME server, tests).
	CAFile string `mapstructure:"ca_file" yaml:"ca_file,omitempty"`
}

// ClientCA requires client certificates signed by CAFile for Host.
type ClientCA struct {
	Host   string `mapstructure:"host" yaml:"host"`
	CAFile string `mapstructure:"ca_file" yaml:"ca_file"`
	// Optional asks for a certificate and verifies one if sent, but lets
	// clients without one through.
	Optional bool `mapstructure:"optional" yaml:"optional"`
}

// GatewayLimits protect the edge against abusive and slow clients.
type GatewayLimits struct {
	MaxHeaderBytes int   `mapstructure:"max_header_bytes" yaml:"max_header_bytes"`
	MaxBodyBytes   int64 `mapstructure:"max_body_bytes" yaml:"max_body_bytes"`
	// ReadHeaderTimeout bounds the time to receive a request's headers
	// (slowloris); IdleTimeout a keep-alive connection's wait for the
	// next request.
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout" yaml:"read_header_timeout"`
	IdleTimeout       time.Duration `mapstructure:"idle_timeout" yaml:"idle_timeout"`
	// MaxConnections bounds open client connections (0: no limit).
	MaxConnections int `mapstructure:"max_connections" yaml:"max_connections"`
	// PerIP and PerSubject are token buckets per client IP and per
	// authenticated subject (max_tokens 0: off).
	PerIP      RateLimit `mapstructure:"per_ip" yaml:"per_ip"`
	PerSubject RateLimit `mapstructure:"per_subject" yaml:"per_subject"`
	// MaxKeys bounds the buckets kept per limit; the least recently used
	// key is dropped first.
	MaxKeys int `mapstructure:"max_keys" yaml:"max_keys"`
	// TrustedProxies are the CIDRs whose X-Forwarded-For is believed
	// (the operator's load balancers); the client IP is the last address
	// not in them.
	TrustedProxies []string `mapstructure:"trusted_proxies" yaml:"trusted_proxies"`
}

// DefaultGateway is the gateway section before the file, environment and
// flags are applied.
func DefaultGateway() Gateway {
	return Gateway{
		Name:            "mesh-gateway",
		HTTPSAddr:       wire.DefaultGatewayHTTPSAddr,
		HTTPAddr:        wire.DefaultGatewayHTTPAddr,
		AdminAddr:       "127.0.0.1:15000",
		ControlPlane:    []string{},
		CacheDir:        "/var/lib/mesh",
		DrainPeriod:     5 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		TLS: GatewayTLS{
			Certificates:   []CertificateFiles{},
			ACME:           GatewayACME{Hosts: []string{}},
			ClientCA:       []ClientCA{},
			ReloadInterval: 2 * time.Second,
		},
		Limits: GatewayLimits{
			MaxHeaderBytes:    32 << 10,
			MaxBodyBytes:      10 << 20,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxConnections:    10000,
			MaxKeys:           100000,
			TrustedProxies:    []string{},
		},
	}
}

func (g *Gateway) validate(v *validator, required bool) {
	v.serviceName("gateway.name", g.Name)
	v.hostPort("gateway.https_addr", g.HTTPSAddr)
	if g.HTTPAddr != "" {
		v.hostPort("gateway.http_addr", g.HTTPAddr)
	}
	v.hostPort("gateway.admin_addr", g.AdminAddr)
	if g.AdvertiseAddr != "" {
		v.ip("gateway.advertise_addr", g.AdvertiseAddr)
	}
	for i, cp := range g.ControlPlane {
		v.hostPort(fmt.Sprintf("gateway.control_plane[%d]", i), cp)
	}
	v.check("gateway.join_token_file", g.JoinTokenFile == "" || len(g.ControlPlane) > 0,
		"needs gateway.control_plane (the identity is signed by mesh control)")
	v.check("gateway.cache_dir", g.CacheDir != "", "is required")
	v.nonNegative("gateway.drain_period", g.DrainPeriod)
	v.positive("gateway.shutdown_timeout", g.ShutdownTimeout)
	g.TLS.validate(v, required)
	g.Limits.validate(v)
}

func (t *GatewayTLS) validate(v *validator, required bool) {
	for i, c := range t.Certificates {
		p := fmt.Sprintf("gateway.tls.certificates[%d]", i)
		v.check(p+".cert_file", c.CertFile != "", "is required")
		v.check(p+".key_file", c.KeyFile != "", "is required")
	}
	a := t.ACME
	if a.Enabled {
		v.check("gateway.tls.acme.directory", strings.HasPrefix(a.Directory, "https://") || strings.HasPrefix(a.Directory, "http://"),
			"must be the ACME directory URL, got %q; write e.g. https://acme-v02.api.letsencrypt.org/directory", a.Directory)
		v.check("gateway.tls.acme.hosts", len(a.Hosts) > 0, "must name at least one host when acme is enabled")
		for i, h := range a.Hosts {
			p := fmt.Sprintf("gateway.tls.acme.hosts[%d]", i)
			if v.check(p, !strings.Contains(h, "*"), "%q: wildcard names need DNS-01, which is not supported; use certificate files", h) {
				v.host(p, h)
			}
		}
	}
	if required {
		v.check("gateway.tls.certificates", len(t.Certificates) > 0 || a.Enabled,
			"is empty and acme is not enabled: the HTTPS listener would have no certificate; add {cert_file, key_file} or enable acme")
	}
	for i, c := range t.ClientCA {
		p := fmt.Sprintf("gateway.tls.client_ca[%d]", i)
		if v.check(p+".host", c.Host != "", "is required") {
			v.host(p+".host", strings.TrimPrefix(c.Host, "*."))
		}
		v.check(p+".ca_file", c.CAFile != "", "is required")
	}
	v.positive("gateway.tls.reload_interval", t.ReloadInterval)
}

func (l *GatewayLimits) validate(v *validator) {
	v.check("gateway.limits.max_header_bytes", l.MaxHeaderBytes >= 1024, "must be at least 1024, got %d; write e.g. 32768", l.MaxHeaderBytes)
	v.check("gateway.limits.max_body_bytes", l.MaxBodyBytes >= 0, "must not be negative (0: no limit), got %d", l.MaxBodyBytes)
	v.positive("gateway.limits.read_header_timeout", l.ReadHeaderTimeout)
	v.positive("gateway.limits.idle_timeout", l.IdleTimeout)
	v.notNegative("gateway.limits.max_connections", l.MaxConnections)
	v.check("gateway.limits.max_keys", l.MaxKeys > 0, "must be more than 0, got %d; write e.g. 100000", l.MaxKeys)
	for name, rl := range map[string]RateLimit{"per_ip": l.PerIP, "per_subject": l.PerSubject} {
		p := "gateway.limits." + name
		if rl.MaxTokens == 0 {
			continue
		}
		v.check(p+".max_tokens", rl.MaxTokens > 0, "must not be negative (0: off), got %d", rl.MaxTokens)
		v.check(p+".tokens_per_fill", rl.TokensPerFill > 0, "must be more than 0 when max_tokens is set, got %d", rl.TokensPerFill)
		v.positive(p+".fill_interval", rl.FillInterval)
	}
	for i, c := range l.TrustedProxies {
		p := fmt.Sprintf("gateway.limits.trusted_proxies[%d]", i)
		_, _, err := net.ParseCIDR(c)
		if err != nil && net.ParseIP(c) == nil {
			v.add(p, "%q is not a CIDR or IP address; write e.g. 10.0.0.0/8", c)
		}
	}
}
