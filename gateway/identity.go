package gateway

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// setupIdentity gives the gateway its mesh identity when
// gateway.join_token_file is set: service gateway.name (the token must be
// minted for it: `mesh control token create --service <name>`), the
// certificate from mesh control's signing RPC, renewed by Run, cached in
// <cache_dir>/identity/<name>. It builds the dialer that speaks mTLS to
// the services that take it, presenting that certificate; without an
// identity the dialer dials in plain text.
func (g *Gateway) setupIdentity() error {
	gc := g.cfg.Gateway
	m, err := mtls.NewMetrics(g.registry)
	if err != nil {
		return err
	}
	g.dialer = &mtls.Dialer{Peer: g.peerOf, Protocol: proxy.DialProtocol, Metrics: m}
	if gc.JoinTokenFile == "" {
		return nil
	}
	g.ident, err = enroll.New(enroll.Options{TokenFile: gc.JoinTokenFile, Field: "gateway.join_token_file",
		Servers: gc.ControlPlane, Service: gc.Name, NodeName: g.node, NodeID: g.nodeID(),
		Dir: filepath.Join(gc.CacheDir, "identity", gc.Name), Log: g.base.With().Str("component", "identity").Logger()})
	if err != nil {
		return err
	}
	g.ident.RegisterMetrics(g.registry)
	g.dialer.Creds = g.ident.Credentials()
	return nil
}

// refuseStrict wraps dial: an endpoint of a service taking mTLS only
// (strict) is not dialed while the gateway holds no certificate (no
// gateway.join_token_file, or none issued yet), so the request fails at
// once with a reason naming what to fix instead of the peer resetting it.
func (g *Gateway) refuseStrict(dial mtls.DialFunc) mtls.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if g.ident == nil || g.ident.Credentials().Leaf() == nil {
			if svc := g.strictService(addr); svc != "" {
				why := "the gateway has no mesh identity (set gateway.join_token_file to a token minted for " + g.cfg.Gateway.Name + ")"
				if g.ident != nil {
					why = "the gateway holds no certificate yet: " + identity.ErrNoIdentity.Error()
				}
				return nil, fmt.Errorf("service %s takes mTLS only (strict) and %s", svc, why)
			}
		}
		return dial(ctx, network, addr)
	}
}

// strictService is the service whose endpoint addr is, when it takes mTLS
// only ("" otherwise).
func (g *Gateway) strictService(addr string) string {
	t := g.served.Load().table
	if t == nil {
		return ""
	}
	for name, s := range t.Services {
		for _, ep := range s.Endpoints {
			if ep.Addr == addr && (s.MTLSMode == wire.MTLSStrict || ep.Meta[wire.MetaMTLS] == wire.MTLSStrict) {
				return name
			}
		}
	}
	return ""
}

// peerOf says whether the endpoint at addr takes mTLS and the identity it
// must prove: the Cluster's UpstreamTlsContext SPIFFE ID, else the
// endpoint's registration (wire.MetaMTLS), the identity then being the
// service's in the gateway's trust domain and namespace unless the
// endpoint's metadata names one (wire.EndpointIdentity).
func (g *Gateway) peerOf(ctx context.Context, addr string) (identity.ID, bool) {
	if g.ident == nil {
		return identity.ID{}, false
	}
	own := g.ident.ID()
	t := g.served.Load().table
	if t == nil {
		return identity.ID{}, false
	}
	check := func(service string, eps []endpoint.Endpoint, clusterID string) (identity.ID, bool, bool) {
		for _, ep := range eps {
			if ep.Addr != addr {
				continue
			}
			want := identity.ID{TrustDomain: own.TrustDomain, Namespace: own.Namespace, Service: service}
			switch {
			case clusterID != "":
				id, err := identity.ParseID(clusterID)
				if err != nil {
					return identity.ID{}, false, true
				}
				want = id
			case ep.Meta[wire.MetaMTLS] == "":
				return identity.ID{}, false, true // neither the Cluster nor the registration takes mTLS
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

// identityDump is the identity's part of /config_dump (never the key).
func (g *Gateway) identityDump() map[string]any {
	if g.ident == nil {
		return map[string]any{"enabled": false}
	}
	d := g.ident.Dump()
	d["enabled"] = true
	return d
}
