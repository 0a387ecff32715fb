package config

import (
	"fmt"

	"github.com/meshvm/mesh/wire"
)

// AgentTLS is an agent's workload identity from files written by the
// operator's PKI or SPIRE (agent.tls), reloaded when they change. All
// three files or none; without them (and without one issued by mesh
// control) the agent has no identity and its hops are plain text.
type AgentTLS struct {
	// CertFile is the certificate chain (PEM, leaf first) carrying the
	// SPIFFE ID spiffe://<trust_domain>/ns/<namespace>/svc/<service>.
	CertFile string `mapstructure:"cert_file" yaml:"cert_file,omitempty"`
	// KeyFile is its private key (PEM), readable by the agent only.
	KeyFile string `mapstructure:"key_file" yaml:"key_file,omitempty"`
	// BundleFile is the trust bundle (PEM): every root a peer may chain to.
	BundleFile string `mapstructure:"bundle_file" yaml:"bundle_file,omitempty"`
	// PeerIdentityHeader carries a verified caller's SPIFFE ID to the app
	// (default x-mesh-peer-identity); a copy sent by the caller is always
	// removed.
	PeerIdentityHeader string `mapstructure:"peer_identity_header" yaml:"peer_identity_header"`
}

// On reports whether the agent has identity files.
func (t AgentTLS) On() bool { return t.CertFile != "" }

// MTLS is the mesh's mTLS policy (control.mtls): the inbound mode of
// every service that does not set its own
// (control.services.<name>.mtls_mode).
type MTLS struct {
	// DefaultMode is permissive (mTLS and plain text accepted, for
	// migration; the default) or strict (mTLS only).
	DefaultMode string `mapstructure:"default_mode" yaml:"default_mode"`
}

// ServiceSettings are control-plane settings of one service
// (control.services.<name>).
type ServiceSettings struct {
	// MTLSMode overrides control.mtls.default_mode for the service's
	// inbound listeners.
	MTLSMode string `mapstructure:"mtls_mode" yaml:"mtls_mode,omitempty"`
	// Subsets group the service's instances, each into a cluster of its
	// own (orders/v2); DefaultSubset, when set, takes the requests no
	// route takes (else the whole service does); Routes are tried in
	// order before that (traffic.go).
	Subsets       []Subset `mapstructure:"subsets" yaml:"subsets,omitempty"`
	DefaultSubset string   `mapstructure:"default_subset" yaml:"default_subset,omitempty"`
	Routes        []Route  `mapstructure:"routes" yaml:"routes,omitempty"`
}

// MTLSMode is the inbound mTLS mode of service.
func (c Control) MTLSMode(service string) string {
	if s, ok := c.Services[service]; ok && s.MTLSMode != "" {
		return s.MTLSMode
	}
	if c.MTLS.DefaultMode == "" {
		return wire.MTLSPermissive
	}
	return c.MTLS.DefaultMode
}

func (t AgentTLS) validate(v *validator) {
	set := 0
	for _, f := range []string{t.CertFile, t.KeyFile, t.BundleFile} {
		if f != "" {
			set++
		}
	}
	v.check("agent.tls", set == 0 || set == 3, "cert_file, key_file and bundle_file go together (got %d of 3)", set)
	v.check("agent.tls.peer_identity_header", t.PeerIdentityHeader == "" || headerNameRE.MatchString(t.PeerIdentityHeader),
		"%q is not a valid HTTP header name", t.PeerIdentityHeader)
}

func (c Control) validateMTLS(v *validator) {
	mode := func(path, m string) {
		v.check(path, m == "" || m == wire.MTLSPermissive || m == wire.MTLSStrict,
			"must be %s or %s, got %q", wire.MTLSPermissive, wire.MTLSStrict, m)
	}
	mode("control.mtls.default_mode", c.MTLS.DefaultMode)
	for name, s := range c.Services {
		v.meshServiceName(fmt.Sprintf("control.services.%s", name), name)
		mode(fmt.Sprintf("control.services.%s.mtls_mode", name), s.MTLSMode)
	}
}
