package gateway

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// parseAuth reads the HTTPS listener's HTTP filters — header_mutation
// (headers stripped from every request), jwt_authn (providers and the
// requirement map), mesh's API key filter — and each route's per-filter
// configs (jwt_authn requirement, API key requirement, RBAC claim rules)
// into the edge's authentication model.
func (g *Gateway) parseAuth(l *listenerv3.Listener, routes *routematch.Table) (*auth, error) {
	a := &auth{routes: map[*routematch.Route]*routeAuth{}}
	byName := map[string]*jwtProvider{}
	var reqs map[string]*jwtv3.JwtRequirement
	for _, hcm := range xdsclient.HTTPConnectionManagers(l) {
		for _, f := range hcm.GetHttpFilters() {
			tc := f.GetTypedConfig()
			switch {
			case tc.MessageIs(&headermutationv3.HeaderMutation{}):
				var hm headermutationv3.HeaderMutation
				if err := tc.UnmarshalTo(&hm); err != nil {
					return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
				}
				for _, m := range hm.GetMutations().GetRequestMutations() {
					if h := m.GetRemove(); h != "" {
						a.stripped = append(a.stripped, h)
					}
				}
			case tc.MessageIs(&jwtv3.JwtAuthentication{}):
				var ja jwtv3.JwtAuthentication
				if err := tc.UnmarshalTo(&ja); err != nil {
					return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
				}
				if err := g.parseProviders(&ja, a, byName); err != nil {
					return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
				}
				reqs = ja.GetRequirementMap()
			case f.GetName() == wire.APIKeyFilter:
				ak, err := parseAPIKeys(tc)
				if err != nil {
					return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
				}
				a.apiKeys = ak
			}
		}
	}
	if routes == nil {
		return a, nil
	}
	for _, vh := range routes.VirtualHosts() {
		for _, rt := range vh.Routes {
			ra, err := g.routeAuth(rt, reqs, byName)
			if err != nil {
				return nil, fmt.Errorf("route %s: %w", routeName(rt), err)
			}
			if ra != nil {
				a.routes[rt] = ra
			}
		}
	}
	return a, nil
}

func (g *Gateway) parseProviders(ja *jwtv3.JwtAuthentication, a *auth, byName map[string]*jwtProvider) error {
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
			ds := jp.GetLocalJwks()
			switch {
			case ds.GetInlineString() != "":
				pc.JWKS = []byte(ds.GetInlineString())
			case len(ds.GetInlineBytes()) > 0:
				pc.JWKS = ds.GetInlineBytes()
			case ds.GetFilename() != "":
				pc.JWKSFile = ds.GetFilename()
			default:
				return fmt.Errorf("provider %s: local_jwks is empty", name)
			}
		case jp.GetRemoteJwks() != nil:
			pc.JWKSURL = jp.GetRemoteJwks().GetHttpUri().GetUri()
			if d := jp.GetRemoteJwks().GetCacheDuration(); d != nil {
				pc.Refresh = d.AsDuration()
			}
		default:
			return fmt.Errorf("provider %s: no JWKS source", name)
		}
		// A provider the running config has with the same settings is kept,
		// with its keys and verified tokens: a push (a route change) while
		// a JWKS URL is down must not lose the last good keys.
		p := g.runningProvider(pc)
		if p == nil {
			var err error
			if p, err = authn.NewProvider(pc, &http.Client{Timeout: 10 * time.Second}, nil); err != nil {
				return err
			}
		}
		if pc.JWKSURL == "" { // local keys: a bad set is refused now (NACK)
			if err := p.Load(context.Background()); err != nil {
				return err
			}
		}
		jwp := &jwtProvider{name: name, p: p, conf: pc}
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
	return nil
}

// runningProvider is the served config's provider built from the same
// settings as pc, or nil.
func (g *Gateway) runningProvider(pc authn.ProviderConfig) *authn.Provider {
	cur := g.served.Load()
	if cur == nil || cur.auth == nil {
		return nil
	}
	for _, jp := range cur.auth.providers {
		if reflect.DeepEqual(jp.conf, pc) {
			return jp.p
		}
	}
	return nil
}

// typedStruct decodes mesh's own filter configs (xds.type.v3.TypedStruct).
func typedStruct(a *anypb.Any, wantType string) (map[string]any, error) {
	var ts xdstypev3.TypedStruct
	if err := a.UnmarshalTo(&ts); err != nil {
		return nil, err
	}
	if ts.GetTypeUrl() != wantType {
		return nil, fmt.Errorf("type_url %q, want %q", ts.GetTypeUrl(), wantType)
	}
	return ts.GetValue().AsMap(), nil
}

func parseAPIKeys(a *anypb.Any) (*apiKeys, error) {
	v, err := typedStruct(a, wire.APIKeyAuthType)
	if err != nil {
		return nil, err
	}
	ak := &apiKeys{header: wire.DefaultAPIKeyHeader}
	if h, _ := v["header"].(string); h != "" {
		ak.header = h
	}
	var keys []authn.APIKey
	list, _ := v["keys"].([]any)
	for i, k := range list {
		m, _ := k.(map[string]any)
		sub, _ := m["subject"].(string)
		hash, _ := m["hash"].(string)
		if sub == "" || hash == "" {
			return nil, fmt.Errorf("keys[%d]: subject and hash are required", i)
		}
		keys = append(keys, authn.APIKey{Subject: sub, Hash: hash})
	}
	if ak.keys, err = authn.NewAPIKeys(keys); err != nil {
		return nil, err
	}
	return ak, nil
}

// routeAuth decodes one route's policy; nil: nothing to check.
func (g *Gateway) routeAuth(rt *routematch.Route, reqs map[string]*jwtv3.JwtRequirement, providers map[string]*jwtProvider) (*routeAuth, error) {
	ra := &routeAuth{realm: g.cfg.Gateway.Name}
	if j := rt.JWT; j.Set && !j.Disabled && j.RequirementName != "" {
		rq := reqs[j.RequirementName]
		if rq == nil {
			return nil, fmt.Errorf("jwt requirement %q is not in the filter's requirement_map", j.RequirementName)
		}
		if err := ra.setJWT(rq, providers); err != nil {
			return nil, fmt.Errorf("jwt requirement %q: %w", j.RequirementName, err)
		}
	}
	if a := rt.PerFilterConfig[wire.APIKeyFilter]; a != nil {
		v, err := typedStruct(a, wire.APIKeyPerRouteType)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", wire.APIKeyFilter, err)
		}
		switch req, _ := v["require"].(string); req {
		case "", "none":
		case "optional":
			ra.apiKey = RequireOptional
		case "required":
			ra.apiKey = RequireRequired
		default:
			return nil, fmt.Errorf("%s: require %q is not none, optional or required", wire.APIKeyFilter, req)
		}
		ra.orJWT, _ = v["or_jwt"].(string)
	}
	if a := rt.PerFilterConfig[wire.RBACFilter]; a != nil {
		var pr rbacfilterv3.RBACPerRoute
		if err := a.UnmarshalTo(&pr); err != nil {
			return nil, fmt.Errorf("%s: %w", wire.RBACFilter, err)
		}
		rules, err := claimRules(pr.GetRbac().GetRules())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", wire.RBACFilter, err)
		}
		ra.rules = rules
	}
	if ra.jwt == RequireNone && ra.apiKey == RequireNone && len(ra.rules) == 0 {
		return nil, nil
	}
	return ra, nil
}

func (ra *routeAuth) setJWT(rq *jwtv3.JwtRequirement, providers map[string]*jwtProvider) error {
	ra.jwt = RequireRequired
	add := func(n string) error {
		p := providers[n]
		if p == nil {
			return fmt.Errorf("provider %q is not defined", n)
		}
		ra.providers = append(ra.providers, p)
		return nil
	}
	switch {
	case rq.GetProviderName() != "":
		return add(rq.GetProviderName())
	case rq.GetRequiresAny() != nil:
		for _, sub := range rq.GetRequiresAny().GetRequirements() {
			switch {
			case sub.GetProviderName() != "":
				if err := add(sub.GetProviderName()); err != nil {
					return err
				}
			case sub.GetAllowMissing() != nil:
				ra.jwt = RequireOptional
			default:
				return fmt.Errorf("requires_any: only provider_name and allow_missing entries are supported")
			}
		}
		return nil
	case rq.GetAllowMissing() != nil:
		ra.jwt = RequireOptional
		return nil
	}
	return fmt.Errorf("only provider_name, requires_any and allow_missing are supported")
}

// claimRules reads the claim rules mesh control writes as an RBAC allow
// policy on jwt_authn's verified payload: for each claim, the payload's
// value equals the wanted one, is a list holding it, or a space-separated
// string holding it (authn.Rule's semantics).
func claimRules(r *rbacv3.RBAC) ([]authn.Rule, error) {
	if r == nil {
		return nil, nil
	}
	if r.GetAction() != rbacv3.RBAC_ALLOW {
		return nil, fmt.Errorf("action %s: only ALLOW claim rules are supported", r.GetAction())
	}
	var rules []authn.Rule
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > 1 {
		return nil, fmt.Errorf("%d policies: one claim policy is supported", len(names))
	}
	for _, n := range names {
		for _, p := range r.GetPolicies()[n].GetPrincipals() {
			ids := []*rbacv3.Principal{p}
			if s := p.GetAndIds(); s != nil {
				ids = s.GetIds()
			}
			for _, id := range ids {
				m := id.GetMetadata()
				path := m.GetPath()
				if m == nil || m.GetFilter() != wire.JWTAuthnFilter || len(path) != 2 || path[0].GetKey() != wire.JWTPayloadMetadataKey {
					return nil, fmt.Errorf("policy %s: only metadata matches on %s.%s.<claim> are supported", n, wire.JWTAuthnFilter, wire.JWTPayloadMetadataKey)
				}
				want := ""
				for _, vm := range m.GetValue().GetOrMatch().GetValueMatchers() {
					if e := vm.GetListMatch().GetOneOf().GetStringMatch().GetExact(); e != "" {
						want = e
					}
				}
				if want == "" {
					want = m.GetValue().GetStringMatch().GetExact()
				}
				if want == "" {
					return nil, fmt.Errorf("policy %s: claim %s: no wanted value", n, path[1].GetKey())
				}
				rules = append(rules, authn.Rule{Claim: path[1].GetKey(), Contains: want})
			}
		}
	}
	return rules, nil
}
