// Package gwconf turns what mesh control sends a gateway node (its two
// listeners, the mesh_gateway route configuration, the clusters) into the
// configuration the gateway serves: listener addresses, JWT providers,
// API keys, the headers to strip, the compiled route table and each
// route's authentication requirement. It is a pure function of the
// resources; whatever it cannot enforce exactly (an unknown HTTP filter,
// a JWT requirement or claim rule of another shape, a provider feature
// the gateway lacks) is an error naming the resource and field, for the
// gateway to NACK while the last good config keeps serving.
package gwconf

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// Config is a gateway's ready-to-serve configuration. It is immutable.
type Config struct {
	// HTTPSAddr and HTTPAddr are the listeners' addresses (host:port).
	HTTPSAddr, HTTPAddr string
	// Routes is the route table both listeners serve: on the HTTP
	// listener, routes not marked plaintext match a redirect to HTTPS
	// first (routes whose :scheme header match is "http").
	Routes *routematch.Table
	// Providers are the JWT providers, by name.
	Providers map[string]*Provider
	// StripHeaders are request headers removed before authentication
	// (the headers verified claims are forwarded in), lower case.
	StripHeaders []string
	// APIKeys are the accepted API keys (hashed), read from APIKeyHeader.
	APIKeys      []APIKey
	APIKeyHeader string
	// Clusters are the clusters the routes send to, sorted; each is in the
	// resources (mesh control sends one for every routed service).
	Clusters []string
	// BypassCORSPreflight lets CORS preflights (OPTIONS with Origin and
	// Access-Control-Request-Method) through authentication, to be
	// answered by the route's CORS policy.
	BypassCORSPreflight bool

	auth map[*routematch.Route]*Auth
	cors map[*routematch.Route]*CORS
}

// CORS is a route's CORS policy (Envoy's CorsPolicy).
type CORS struct {
	// AllowOrigins are exact origins; "*" allows any.
	AllowOrigins     []string
	AllowMethods     string // comma-separated, as sent
	AllowHeaders     string
	ExposeHeaders    string
	MaxAge           string // seconds, as sent; "" for none
	AllowCredentials bool
}

// CORS is the route's CORS policy, nil for none.
func (c *Config) CORS(rt *routematch.Route) *CORS { return c.cors[rt] }

// Provider is a JWT provider.
type Provider struct {
	Name      string
	Issuer    string
	Audiences []string
	// JWKS is the inline key set (jwks_file on the control plane), or
	// JWKSURL the URL to fetch it from every Refresh.
	JWKS      []byte
	JWKSURL   string
	Refresh   time.Duration
	ClockSkew time.Duration
	// ClaimsToHeaders forward verified claims (sorted by claim).
	ClaimsToHeaders []ClaimHeader
	// Headers and Cookies say where a token is; both empty means the
	// Authorization header with the "Bearer " prefix.
	Headers []TokenHeader
	Cookies []string
}

// ClaimHeader forwards a claim in a header (lower case).
type ClaimHeader struct{ Claim, Header string }

// TokenHeader is a header carrying a token after Prefix.
type TokenHeader struct{ Name, Prefix string }

// APIKey is an accepted key's hash ("sha256:<hex>") and subject.
type APIKey struct{ Subject, Hash string }

// Requirement values of Auth.Require.
const (
	Required = "required"
	Optional = "optional"
	None     = "none"
)

// Auth is one route's authentication.
type Auth struct {
	// Require is Required (no valid credential: 401), Optional (a bad
	// credential: 401, none: let through) or None (no checks).
	Require string
	// JWT is the provider whose token is accepted ("" for none); APIKey
	// says whether an API key is accepted. With both, either will do.
	JWT    string
	APIKey bool
	// Claims must all hold on a verified token (else 403): the claim
	// equals Contains, or is a list or space-separated string holding it.
	Claims []Claim
}

// Claim is one claim rule.
type Claim struct{ Claim, Contains string }

var noAuth = &Auth{Require: None}

// Auth is the route's authentication (None for routes that have none).
func (c *Config) Auth(rt *routematch.Route) *Auth {
	if a, ok := c.auth[rt]; ok {
		return a
	}
	return noAuth
}

// Parse builds the gateway's configuration from a gateway node's
// resources.
func Parse(r xdsclient.Resources) (*Config, error) {
	c := &Config{Providers: map[string]*Provider{}, auth: map[*routematch.Route]*Auth{}, cors: map[*routematch.Route]*CORS{}}
	var filters *filterSet
	for _, l := range []struct {
		name string
		addr *string
	}{{wire.GatewayHTTPSListener, &c.HTTPSAddr}, {wire.GatewayHTTPListener, &c.HTTPAddr}} {
		lis, ok := r.Listeners[l.name]
		if !ok {
			return nil, fmt.Errorf("listener %s: missing", l.name)
		}
		addr, fs, err := parseListener(lis)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.name, err)
		}
		if filters != nil && !filters.same(fs) {
			return nil, fmt.Errorf("listener %s: its HTTP filters differ from %s's; the gateway serves one set", l.name, wire.GatewayHTTPSListener)
		}
		filters, *l.addr = fs, addr
	}
	if err := c.useFilters(filters); err != nil {
		return nil, fmt.Errorf("listener %s: %w", wire.GatewayHTTPSListener, err)
	}
	rc, ok := r.Routes[wire.GatewayRoute]
	if !ok {
		return nil, fmt.Errorf("route configuration %s: missing", wire.GatewayRoute)
	}
	t, err := routematch.Compile(rc)
	if err != nil {
		return nil, fmt.Errorf("route configuration %s: %w", wire.GatewayRoute, err)
	}
	c.Routes = t
	clusters := map[string]bool{}
	for _, vh := range t.VirtualHosts() {
		for _, rt := range vh.Routes {
			if rt.Fault != nil || len(rt.Mirrors) > 0 || len(rt.HashPolicies) > 0 {
				// The agents' steps; the gateway's path has none of them.
				return nil, fmt.Errorf("route configuration %s: virtual host %q route %d %q: fault injection, request_mirror_policies and hash_policy are not supported by the gateway", wire.GatewayRoute, rt.VirtualHost, rt.Index, rt.Name)
			}
			if err := c.routeAuth(rt, filters); err != nil {
				return nil, fmt.Errorf("route configuration %s: virtual host %q route %d %q: %w", wire.GatewayRoute, rt.VirtualHost, rt.Index, rt.Name, err)
			}
			if rt.Cluster != "" {
				clusters[rt.Cluster] = true
			}
			for _, wc := range rt.Clusters {
				clusters[wc.Name] = true
			}
		}
	}
	for name := range clusters {
		if _, ok := r.Clusters[name]; !ok {
			return nil, fmt.Errorf("route configuration %s: routes to cluster %q, which was not sent", wire.GatewayRoute, name)
		}
		c.Clusters = append(c.Clusters, name)
	}
	sort.Strings(c.Clusters)
	return c, nil
}

// filterSet is a listener's HTTP filters, decoded.
type filterSet struct {
	names  []string
	strip  []string
	jwt    *jwtv3.JwtAuthentication
	apiKey *structpb.Struct
}

func (f *filterSet) same(o *filterSet) bool {
	return slices.Equal(f.names, o.names) && slices.Equal(f.strip, o.strip) &&
		fmt.Sprint(f.jwt) == fmt.Sprint(o.jwt) && fmt.Sprint(f.apiKey) == fmt.Sprint(o.apiKey)
}

func parseListener(l *listenerv3.Listener) (string, *filterSet, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil || sa.GetPortValue() == 0 {
		return "", nil, fmt.Errorf("address: want a socket address with a port value")
	}
	addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		return "", nil, fmt.Errorf("filter_chains: want one chain of one filter (%s)", wire.HTTPConnectionManager)
	}
	f := l.GetFilterChains()[0].GetFilters()[0]
	var hcm hcmv3.HttpConnectionManager
	if f.GetName() != wire.HTTPConnectionManager || f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
		return "", nil, fmt.Errorf("filter %q: want %s", f.GetName(), wire.HTTPConnectionManager)
	}
	if hcm.GetRds().GetRouteConfigName() != wire.GatewayRoute {
		return "", nil, fmt.Errorf("%s: want RDS route configuration %s", wire.HTTPConnectionManager, wire.GatewayRoute)
	}
	fs, err := parseFilters(hcm.GetHttpFilters())
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", wire.HTTPConnectionManager, err)
	}
	return addr, fs, nil
}

// filterOrder is the order the gateway enforces its filters in; each may
// be absent but router.
var filterOrder = []string{wire.HeaderMutationFilter, wire.CORSFilter, wire.JWTAuthnFilter, wire.APIKeyFilter, wire.RBACFilter, wire.RouterFilter}

func parseFilters(hf []*hcmv3.HttpFilter) (*filterSet, error) {
	fs := &filterSet{}
	last := -1
	for i, f := range hf {
		at := fmt.Sprintf("http_filters[%d] %s", i, f.GetName())
		pos := slices.Index(filterOrder, f.GetName())
		if pos < 0 {
			return nil, fmt.Errorf("%s: the gateway cannot enforce this filter", at)
		}
		if pos <= last {
			return nil, fmt.Errorf("%s: out of order (want %s)", at, strings.Join(filterOrder, ", "))
		}
		last = pos
		fs.names = append(fs.names, f.GetName())
		tc := f.GetTypedConfig()
		var err error
		switch f.GetName() {
		case wire.HeaderMutationFilter:
			fs.strip, err = parseStrip(tc)
		case wire.JWTAuthnFilter:
			fs.jwt = &jwtv3.JwtAuthentication{}
			err = tc.UnmarshalTo(fs.jwt)
		case wire.APIKeyFilter:
			fs.apiKey, err = typedStruct(tc, wire.APIKeyAuthType)
		case wire.RBACFilter:
			var rb rbacfilterv3.RBAC
			if err = tc.UnmarshalTo(&rb); err == nil && (rb.GetRules() != nil || rb.GetMatcher() != nil || rb.GetShadowRules() != nil) {
				err = fmt.Errorf("listener-wide rules: only per-route claim rules are supported")
			}
		case wire.RouterFilter:
			err = tc.UnmarshalTo(&routerv3.Router{})
		case wire.CORSFilter:
			err = tc.UnmarshalTo(&corsv3.Cors{})
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
	}
	if last != len(filterOrder)-1 {
		return nil, fmt.Errorf("http_filters: the last must be %s", wire.RouterFilter)
	}
	return fs, nil
}

func parseStrip(a *anypb.Any) ([]string, error) {
	var hm headermutationv3.HeaderMutation
	if err := a.UnmarshalTo(&hm); err != nil {
		return nil, err
	}
	m := hm.GetMutations()
	if len(m.GetResponseMutations())+len(m.GetQueryParameterMutations())+len(m.GetRequestTrailersMutations())+len(m.GetResponseTrailersMutations()) > 0 {
		return nil, fmt.Errorf("mutations: only request header removals are supported")
	}
	var out []string
	for i, rm := range m.GetRequestMutations() {
		if rm.GetRemove() == "" {
			return nil, fmt.Errorf("mutations.request_mutations[%d]: only remove is supported", i)
		}
		out = append(out, strings.ToLower(rm.GetRemove()))
	}
	return out, nil
}

func typedStruct(a *anypb.Any, typeURL string) (*structpb.Struct, error) {
	var ts xdstypev3.TypedStruct
	if err := a.UnmarshalTo(&ts); err != nil {
		return nil, fmt.Errorf("want an xds.type.v3.TypedStruct: %w", err)
	}
	if ts.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("type_url %q, want %q", ts.GetTypeUrl(), typeURL)
	}
	if ts.GetValue() == nil {
		return &structpb.Struct{}, nil
	}
	return ts.GetValue(), nil
}

func (c *Config) useFilters(fs *filterSet) error {
	c.StripHeaders = fs.strip
	if fs.jwt != nil {
		c.BypassCORSPreflight = fs.jwt.GetBypassCorsPreflight()
		if len(fs.jwt.GetRules()) > 0 || fs.jwt.GetFilterStateRules() != nil {
			return fmt.Errorf("%s: rules: only per-route requirements are supported", wire.JWTAuthnFilter)
		}
		for _, name := range sortedKeys(fs.jwt.GetProviders()) {
			p, err := parseProvider(name, fs.jwt.GetProviders()[name])
			if err != nil {
				return fmt.Errorf("%s: providers[%s]: %w", wire.JWTAuthnFilter, name, err)
			}
			c.Providers[name] = p
		}
	}
	if fs.apiKey != nil {
		f := fs.apiKey.GetFields()
		c.APIKeyHeader = strings.ToLower(f["header"].GetStringValue())
		if c.APIKeyHeader == "" {
			c.APIKeyHeader = wire.DefaultAPIKeyHeader
		}
		for i, v := range f["keys"].GetListValue().GetValues() {
			k := v.GetStructValue().GetFields()
			key := APIKey{Subject: k["subject"].GetStringValue(), Hash: k["hash"].GetStringValue()}
			if key.Subject == "" || !strings.HasPrefix(key.Hash, "sha256:") {
				return fmt.Errorf("%s: keys[%d]: want a subject and a sha256: hash", wire.APIKeyFilter, i)
			}
			c.APIKeys = append(c.APIKeys, key)
		}
	}
	return nil
}

func parseProvider(name string, p *jwtv3.JwtProvider) (*Provider, error) {
	switch {
	case p.GetForward():
		return nil, fmt.Errorf("forward: the gateway never forwards tokens")
	case len(p.GetFromParams()) > 0:
		return nil, fmt.Errorf("from_params: not supported")
	case p.GetSubjects() != nil, p.GetRequireExpiration(), p.GetMaxLifetime() != nil:
		return nil, fmt.Errorf("subjects/require_expiration/max_lifetime: not supported")
	case p.GetForwardPayloadHeader() != "" || p.GetHeaderInMetadata() != "" || p.GetFailedStatusInMetadata() != "":
		return nil, fmt.Errorf("forward_payload_header/header_in_metadata/failed_status_in_metadata: not supported")
	case p.GetPayloadInMetadata() != "" && p.GetPayloadInMetadata() != wire.JWTPayloadMetadataKey:
		return nil, fmt.Errorf("payload_in_metadata %q: claim rules read %q", p.GetPayloadInMetadata(), wire.JWTPayloadMetadataKey)
	case p.GetIssuer() == "":
		return nil, fmt.Errorf("issuer: required (the gateway checks iss)")
	}
	out := &Provider{Name: name, Issuer: p.GetIssuer(), Audiences: p.GetAudiences(),
		ClockSkew: time.Duration(p.GetClockSkewSeconds()) * time.Second, Cookies: p.GetFromCookies()}
	if out.ClockSkew == 0 {
		out.ClockSkew = 60 * time.Second // Envoy's default
	}
	for _, h := range p.GetFromHeaders() {
		out.Headers = append(out.Headers, TokenHeader{Name: strings.ToLower(h.GetName()), Prefix: h.GetValuePrefix()})
	}
	for _, ch := range p.GetClaimToHeaders() {
		if ch.GetClaimName() == "" || ch.GetHeaderName() == "" {
			return nil, fmt.Errorf("claim_to_headers: claim_name and header_name are required")
		}
		out.ClaimsToHeaders = append(out.ClaimsToHeaders, ClaimHeader{Claim: ch.GetClaimName(), Header: strings.ToLower(ch.GetHeaderName())})
	}
	switch {
	case p.GetLocalJwks() != nil:
		ds := p.GetLocalJwks()
		switch {
		case ds.GetInlineString() != "":
			out.JWKS = []byte(ds.GetInlineString())
		case len(ds.GetInlineBytes()) > 0:
			out.JWKS = ds.GetInlineBytes()
		default:
			return nil, fmt.Errorf("local_jwks: only inline_string and inline_bytes are supported")
		}
	case p.GetRemoteJwks() != nil:
		rj := p.GetRemoteJwks()
		out.JWKSURL = rj.GetHttpUri().GetUri()
		if out.JWKSURL == "" {
			return nil, fmt.Errorf("remote_jwks.http_uri.uri: required")
		}
		out.Refresh = rj.GetCacheDuration().AsDuration()
		if out.Refresh <= 0 {
			out.Refresh = 5 * time.Minute // Envoy's default
		}
	default:
		return nil, fmt.Errorf("jwks: want local_jwks or remote_jwks")
	}
	return out, nil
}

// routeAuth decodes a route's typed_per_filter_config into its Auth.
func (c *Config) routeAuth(rt *routematch.Route, fs *filterSet) error {
	a := &Auth{Require: None}
	jwtReq := None
	if rt.JWT.Set && !rt.JWT.Disabled {
		if fs.jwt == nil {
			return fmt.Errorf("a jwt_authn requirement, but the listener has no %s filter", wire.JWTAuthnFilter)
		}
		req, ok := fs.jwt.GetRequirementMap()[rt.JWT.RequirementName]
		if !ok {
			return fmt.Errorf("%s: requirement %q is not in the requirement_map", wire.JWTAuthnFilter, rt.JWT.RequirementName)
		}
		provider, optional, err := parseRequirement(req)
		if err != nil {
			return fmt.Errorf("%s: requirement %q: %w", wire.JWTAuthnFilter, rt.JWT.RequirementName, err)
		}
		if _, ok := c.Providers[provider]; !ok {
			return fmt.Errorf("%s: requirement %q names provider %q, which is not configured", wire.JWTAuthnFilter, rt.JWT.RequirementName, provider)
		}
		a.JWT, jwtReq = provider, Required
		if optional {
			jwtReq = Optional
		}
	}
	a.Require = jwtReq
	if pc, ok := rt.PerFilterConfig[wire.APIKeyFilter]; ok {
		s, err := typedStruct(pc, wire.APIKeyPerRouteType)
		if err != nil {
			return fmt.Errorf("typed_per_filter_config[%s]: %w", wire.APIKeyFilter, err)
		}
		f := s.GetFields()
		req := f["require"].GetStringValue()
		switch req {
		case None, "":
		case Required, Optional:
			if fs.apiKey == nil {
				return fmt.Errorf("typed_per_filter_config[%s]: the listener has no %s filter", wire.APIKeyFilter, wire.APIKeyFilter)
			}
			orJWT := f["or_jwt"].GetStringValue()
			if orJWT != a.JWT || (a.JWT != "" && jwtReq != Optional) {
				return fmt.Errorf("typed_per_filter_config[%s]: or_jwt %q does not match the route's optional JWT requirement (%q)", wire.APIKeyFilter, orJWT, a.JWT)
			}
			a.APIKey, a.Require = true, req
		default:
			return fmt.Errorf("typed_per_filter_config[%s]: require %q is not required, optional or none", wire.APIKeyFilter, req)
		}
	}
	for name := range rt.PerFilterConfig {
		switch name {
		case wire.JWTAuthnFilter, wire.APIKeyFilter, wire.RBACFilter:
		case wire.CORSFilter:
			if !slices.Contains(fs.names, wire.CORSFilter) {
				return fmt.Errorf("typed_per_filter_config[%s]: the listener has no %s filter", name, name)
			}
			cors, err := parseCORS(rt.PerFilterConfig[name])
			if err != nil {
				return fmt.Errorf("typed_per_filter_config[%s]: %w", name, err)
			}
			c.cors[rt] = cors
		default:
			return fmt.Errorf("typed_per_filter_config[%s]: the gateway cannot enforce this filter", name)
		}
	}
	if pc, ok := rt.PerFilterConfig[wire.RBACFilter]; ok {
		claims, err := parseClaimRules(pc)
		if err != nil {
			return fmt.Errorf("typed_per_filter_config[%s]: %w", wire.RBACFilter, err)
		}
		if len(claims) > 0 && a.JWT == "" {
			return fmt.Errorf("typed_per_filter_config[%s]: claim rules on a route with no JWT requirement", wire.RBACFilter)
		}
		a.Claims = claims
	}
	if a.Require != None || len(a.Claims) > 0 {
		c.auth[rt] = a
	}
	return nil
}

// parseRequirement accepts what mesh control writes: provider_name (a
// token is required), or requires_any [provider_name, allow_missing]
// (optional).
func parseRequirement(r *jwtv3.JwtRequirement) (provider string, optional bool, err error) {
	if p := r.GetProviderName(); p != "" {
		return p, false, nil
	}
	if any := r.GetRequiresAny().GetRequirements(); len(any) == 2 && any[0].GetProviderName() != "" && any[1].GetAllowMissing() != nil {
		return any[0].GetProviderName(), true, nil
	}
	return "", false, fmt.Errorf("only provider_name, or requires_any of provider_name and allow_missing, are supported")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// parseCORS accepts exact origins (or "*"), methods, headers, max age and
// credentials; runtime fractions and private network access are refused.
func parseCORS(a *anypb.Any) (*CORS, error) {
	var p corsv3.CorsPolicy
	if err := a.UnmarshalTo(&p); err != nil {
		return nil, err
	}
	if p.GetFilterEnabled() != nil || p.GetShadowEnabled() != nil || p.GetAllowPrivateNetworkAccess() != nil || p.GetForwardNotMatchingPreflights() != nil {
		return nil, fmt.Errorf("filter_enabled/shadow_enabled/allow_private_network_access/forward_not_matching_preflights: not supported")
	}
	out := &CORS{AllowMethods: p.GetAllowMethods(), AllowHeaders: p.GetAllowHeaders(), ExposeHeaders: p.GetExposeHeaders(),
		MaxAge: p.GetMaxAge(), AllowCredentials: p.GetAllowCredentials().GetValue()}
	for i, m := range p.GetAllowOriginStringMatch() {
		e := m.GetExact()
		if e == "" || m.GetIgnoreCase() {
			return nil, fmt.Errorf("allow_origin_string_match[%d]: only exact origins are supported", i)
		}
		out.AllowOrigins = append(out.AllowOrigins, e)
	}
	if len(out.AllowOrigins) == 0 {
		return nil, fmt.Errorf("allow_origin_string_match: empty")
	}
	return out, nil
}
