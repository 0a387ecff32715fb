package gateway

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// served is one whole config the gateway serves: the services' table
// (clusters, endpoints, policies) compiled into the chain's handlers, the
// route table, the authentication config, and the edge path built from
// them. It is immutable; a new control-plane push builds a new one, which
// replaces it atomically (requests see one or the other).
type served struct {
	version  string
	table    *table.Table
	handlers *chain.Handlers
	routes   *routematch.Table
	auth     *auth
	cors     map[*routematch.Route]*corsPolicy
	edge     *chain.EdgePath
	// stop ends the background work of this version (JWKS refresh).
	stop context.CancelFunc
}

// parseResources turns a complete xDS resource set into what the edge
// serves (everything checked; no I/O but reading local JWKS files).
func (g *Gateway) parseResources(res xdsclient.Resources) (*served, error) {
	t, err := xdsconf.Translate(res)
	if err != nil {
		return nil, err
	}
	s := &served{version: t.Version, table: t}
	if rc := res.Routes[wire.GatewayRoute]; rc != nil {
		if s.routes, err = routematch.Compile(rc); err != nil {
			return nil, fmt.Errorf("route %s: %w", wire.GatewayRoute, err)
		}
	}
	if s.cors, err = corsPolicies(s.routes); err != nil {
		return nil, fmt.Errorf("route %s: cors: %w", wire.GatewayRoute, err)
	}
	if l := res.Listeners[wire.GatewayHTTPSListener]; l != nil {
		for _, hcm := range xdsclient.HTTPConnectionManagers(l) {
			for _, f := range hcm.GetHttpFilters() {
				if f.GetName() != wire.JWTAuthnFilter && !f.GetTypedConfig().MessageIs(&jwtv3.JwtAuthentication{}) {
					continue
				}
				var ja jwtv3.JwtAuthentication
				if err := f.GetTypedConfig().UnmarshalTo(&ja); err != nil {
					return nil, fmt.Errorf("listener %s filter %s: %w", wire.GatewayHTTPSListener, f.GetName(), err)
				}
				if s.auth, err = g.parseAuth(&ja); err != nil {
					return nil, fmt.Errorf("listener %s filter %s: %w", wire.GatewayHTTPSListener, f.GetName(), err)
				}
			}
		}
	}
	return s, nil
}

// parseAuth reads the standard jwt_authn filter config: providers
// (issuer, audiences, JWKS file or URL, token sources, claim_to_headers)
// and the requirement map routes refer to.
func (g *Gateway) parseAuth(ja *jwtv3.JwtAuthentication) (*auth, error) {
	a := &auth{requirements: map[string]*requirement{}}
	byName := map[string]*jwtProvider{}
	names := make([]string, 0, len(ja.GetProviders()))
	for n := range ja.GetProviders() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		jp := ja.GetProviders()[name]
		pc := authn.ProviderConfig{Name: name, Issuer: jp.GetIssuer(), Audiences: jp.GetAudiences(),
			ClockSkew: time.Duration(jp.GetClockSkewSeconds()) * time.Second}
		switch {
		case jp.GetLocalJwks() != nil:
			if pc.JWKSFile = jp.GetLocalJwks().GetFilename(); pc.JWKSFile == "" {
				return nil, fmt.Errorf("provider %s: local_jwks: only filename is supported", name)
			}
		case jp.GetRemoteJwks() != nil:
			pc.JWKSURL = jp.GetRemoteJwks().GetHttpUri().GetUri()
			if d := jp.GetRemoteJwks().GetCacheDuration(); d != nil {
				pc.Refresh = d.AsDuration()
			}
		default:
			return nil, fmt.Errorf("provider %s: no JWKS source", name)
		}
		p, err := authn.NewProvider(pc, &http.Client{Timeout: 10 * time.Second}, nil)
		if err != nil {
			return nil, fmt.Errorf("provider %s: %w", name, err)
		}
		if pc.JWKSFile != "" {
			if err := p.Load(context.Background()); err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
		}
		jwp := &jwtProvider{name: name, p: p}
		for _, h := range jp.GetFromHeaders() {
			jwp.sources = append(jwp.sources, authn.Source{Header: h.GetName(), Prefix: h.GetValuePrefix()})
		}
		for _, c := range jp.GetFromCookies() {
			jwp.sources = append(jwp.sources, authn.Source{Cookie: c})
		}
		if len(jwp.sources) == 0 {
			jwp.sources = authn.DefaultSources
		}
		for _, ch := range jp.GetClaimToHeaders() {
			jwp.claimHeaders = append(jwp.claimHeaders, claimHeader{claim: ch.GetClaimName(), header: ch.GetHeaderName()})
			a.stripped = append(a.stripped, ch.GetHeaderName())
		}
		byName[name] = jwp
		a.providers = append(a.providers, jwp)
	}
	for name, rq := range ja.GetRequirementMap() {
		r, err := requirementOf(rq, byName)
		if err != nil {
			return nil, fmt.Errorf("requirement %s: %w", name, err)
		}
		r.realm = g.cfg.Gateway.Name
		a.requirements[name] = r
	}
	return a, nil
}

func requirementOf(rq *jwtv3.JwtRequirement, providers map[string]*jwtProvider) (*requirement, error) {
	r := &requirement{require: RequireRequired}
	add := func(n string) error {
		p := providers[n]
		if p == nil {
			return fmt.Errorf("provider %q is not defined", n)
		}
		r.providers = append(r.providers, p)
		return nil
	}
	switch {
	case rq.GetProviderName() != "":
		if err := add(rq.GetProviderName()); err != nil {
			return nil, err
		}
	case rq.GetRequiresAny() != nil:
		for _, sub := range rq.GetRequiresAny().GetRequirements() {
			switch {
			case sub.GetProviderName() != "":
				if err := add(sub.GetProviderName()); err != nil {
					return nil, err
				}
			case sub.GetAllowMissing() != nil || sub.GetAllowMissingOrFailed() != nil:
				r.require = RequireOptional
			default:
				return nil, fmt.Errorf("requires_any: only provider_name and allow_missing entries are supported")
			}
		}
	case rq.GetAllowMissing() != nil || rq.GetAllowMissingOrFailed() != nil:
		r.require = RequireOptional
	default:
		return nil, fmt.Errorf("only provider_name, requires_any and allow_missing are supported")
	}
	return r, nil
}

// compile builds s's handlers and edge path; nothing is swapped yet.
func (g *Gateway) compile(s *served) error {
	h, err := chain.Compile(s.table, nil, chain.Local{Service: g.cfg.Gateway.Name}, g.forwarder, g.state, g.base)
	if err != nil {
		return fmt.Errorf("compile table %s: %w", s.version, err)
	}
	s.handlers = h
	s.edge = h.Edge(g.compileEdge(s))
	return nil
}

// install swaps s in and stops the version it replaces.
func (g *Gateway) install(s *served) {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if s.auth != nil {
		s.auth.run(ctx)
	}
	if old := g.served.Swap(s); old != nil && old.stop != nil {
		old.stop()
	}
}

// emptyServed is what the gateway serves before any config: no routes
// (404 no-route).
func (g *Gateway) emptyServed() *served {
	s := &served{version: "none", table: &table.Table{Version: "none", Static: true, Services: map[string]*table.Service{}}}
	if err := g.compile(s); err != nil {
		panic(fmt.Sprintf("gateway: empty config does not compile: %v", err)) // a bug, not input
	}
	return s
}
