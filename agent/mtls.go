package agent

import (
	"context"
	"fmt"
	"maps"
	"net"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// setupIdentity loads the agent's identity files (agent.tls), if any, and
// builds the mTLS seams: the inbound listener wrapper and the dialer.
func (a *Agent) setupIdentity(cfg config.Config) error {
	m, err := mtls.NewMetrics(a.registry)
	if err != nil {
		return err
	}
	a.mtlsM = m
	a.dialer = &mtls.Dialer{Peer: a.peerOf, Protocol: proxy.DialProtocol, Metrics: m}
	t := cfg.Agent.TLS
	if !t.On() {
		return nil
	}
	a.fileCreds = &identity.Credentials{}
	a.files = &identity.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, BundleFile: t.BundleFile, Creds: a.fileCreds,
		Log: a.base.With().Str("component", "identity").Logger()}
	if _, err := a.files.Load(time.Now()); err != nil {
		return fmt.Errorf("agent.tls: %w", err)
	}
	if id := a.fileCreds.ID(); id.Service != cfg.Agent.Service {
		return fmt.Errorf("agent.tls: the certificate in %s is %s, not service %s", t.CertFile, id, cfg.Agent.Service)
	}
	a.dialer.Creds = a.fileCreds
	return nil
}

// credentials is the agent's identity now, nil without one.
func (a *Agent) credentials() *identity.Credentials {
	if a.fileCreds != nil {
		return a.fileCreds
	}
	return a.creds
}

// inboundMTLSMode is the inbound listener's mode: the control plane's
// (the Listener's filter chains), else the local config's
// (control.services.<service>.mtls_mode, control.mtls.default_mode).
func (a *Agent) inboundMTLSMode() string {
	if m := a.handlers.Current().Table().Inbound.MTLSMode; m != "" {
		return m
	}
	cfg := a.config()
	return cfg.Control.MTLSMode(cfg.Agent.Service)
}

// awaitCertificate holds the Consul registration of an agent whose
// identity comes from mesh control while its inbound mode is strict and
// it holds no valid certificate: in strict mode it could serve no caller,
// so no caller must be sent to it. The mode is known before any contact
// with mesh control: from the cached xDS config, else the local config.
func (a *Agent) awaitCertificate(ctx context.Context) error {
	if a.ident == nil {
		return nil
	}
	for {
		leaf := a.creds.Leaf()
		if leaf != nil && time.Now().Before(leaf.NotAfter) || a.inboundMTLSMode() != wire.MTLSStrict {
			if a.awaitingCert.Swap(false) {
				a.log.Info().Msg("certificate held: registering in consul")
			}
			return nil
		}
		if !a.awaitingCert.Swap(true) {
			a.log.Info().Msg("mtls strict: not registering in consul until mesh control issues a certificate")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// secureInbound wraps the inbound listener with mTLS when the agent has
// an identity.
func (a *Agent) secureInbound(ln net.Listener) net.Listener {
	creds := a.credentials()
	if creds == nil {
		return ln
	}
	in := &mtls.Inbound{Creds: creds, Mode: a.inboundMTLSMode, Metrics: a.mtlsM,
		Log: a.base.With().Str("component", "mtls").Logger()}
	return in.Listener(ln)
}

// registrationMeta is the user's meta plus the mTLS mode the inbound
// listener takes, when the agent has an identity.
func (a *Agent) registrationMeta(c config.Config) map[string]string {
	if a.credentials() == nil {
		return c.Agent.Meta
	}
	meta := maps.Clone(c.Agent.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	mode := c.Control.MTLSMode(c.Agent.Service)
	if m := a.handlers.Current().Table().Inbound.MTLSMode; m != "" {
		mode = m
	}
	meta[wire.MetaMTLS] = mode
	return meta
}

// peerOf says whether the endpoint at addr takes mTLS and the identity it
// must prove: the control plane's Cluster (its UpstreamTlsContext's
// SPIFFE ID), else the endpoint's registration (MetaMTLS), the identity
// being ns/<namespace>/svc/<service> in the agent's own trust domain and
// namespace unless the endpoint's metadata names one.
func (a *Agent) peerOf(ctx context.Context, addr string) (identity.ID, bool) {
	creds := a.credentials()
	if creds == nil {
		return identity.ID{}, false
	}
	own := creds.ID()
	t := a.handlers.Current().Table()
	check := func(service string, eps []endpoint.Endpoint, clusterID string) (identity.ID, bool, bool) {
		for _, ep := range eps {
			if ep.Addr != addr {
				continue
			}
			want := identity.ID{TrustDomain: own.TrustDomain, Namespace: own.Namespace, Service: service}
			switch {
			case t.Static && clusterID == "":
				return identity.ID{}, false, true // the Cluster has no UpstreamTlsContext
			case t.Static:
				id, err := identity.ParseID(clusterID)
				if err != nil {
					return identity.ID{}, false, true
				}
				want = id
			case ep.Meta[wire.MetaMTLS] == "":
				return identity.ID{}, false, true // registered without mTLS
			}
			if s := ep.Meta[wire.EndpointIdentity]; s != "" { // ns/<namespace>/svc/<service>
				if id, err := identity.ParseID("spiffe://" + want.TrustDomain + "/" + s); err == nil {
					want = id
				}
			}
			return want, true, true
		}
		return identity.ID{}, false, false
	}
	hint := ""
	if rec := observability.RecordFrom(ctx); rec != nil {
		hint = rec.UpstreamService
	}
	if t.Static {
		if s, ok := t.Services[hint]; ok {
			if id, tls, found := check(hint, s.Endpoints, s.MTLSIdentity); found {
				return id, tls
			}
		}
		for name, s := range t.Services {
			if id, tls, found := check(name, s.Endpoints, s.MTLSIdentity); found {
				return id, tls
			}
		}
		return identity.ID{}, false
	}
	if hint != "" {
		if eps, err := a.resolver.Resolve(ctx, hint); err == nil {
			if id, tls, found := check(hint, eps, ""); found {
				return id, tls
			}
		}
	}
	for name, eps := range a.resolver.Snapshot() {
		if id, tls, found := check(name, eps, ""); found {
			return id, tls
		}
	}
	return identity.ID{}, false
}

// mtlsDump is the identity and modes /config_dump shows.
func (a *Agent) mtlsDump() map[string]any {
	creds := a.credentials()
	d := map[string]any{"inbound_mode": a.inboundMTLSMode(), "enabled": creds != nil}
	if creds != nil {
		if leaf := creds.Leaf(); leaf != nil {
			d["identity"] = creds.ID().String()
			d["serial"] = leaf.SerialNumber.String()
			d["expiry"] = leaf.NotAfter
		}
		if a.files != nil {
			d["source"] = map[string]string{"cert_file": a.files.CertFile, "bundle_file": a.files.BundleFile}
		}
	}
	t := a.handlers.Current().Table()
	services := map[string]any{}
	if t.Static {
		for name, s := range t.Services {
			e := map[string]any{"mode": cmpOr(s.MTLSMode, "plaintext")}
			if s.MTLSIdentity != "" {
				e["upstream_identity"] = s.MTLSIdentity
			}
			services[name] = e
		}
	} else {
		// Consul-direct: what each service's instances registered.
		for name, eps := range a.resolver.Snapshot() {
			modes := map[string]int{}
			for _, ep := range eps {
				modes[cmpOr(ep.Meta[wire.MetaMTLS], "plaintext")]++
			}
			services[name] = map[string]any{"instances_by_mode": modes}
		}
	}
	d["services"] = services
	return d
}

// peerHeader is the header carrying the verified caller to the app.
func (a *Agent) peerHeader() string {
	if h := a.config().Agent.TLS.PeerIdentityHeader; h != "" {
		return h
	}
	return wire.PeerIdentityHeader
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
