package translate

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// Gateway is what gateway nodes' resources are built from: the configured
// routes and authentication (control.gateway) and the contents of the
// providers' jwks_file, which the control plane reads (translation does
// no I/O).
type Gateway struct {
	Config config.ControlGateway
	// JWKS holds each jwks_file provider's key set, by provider name.
	JWKS map[string]string
}

// SetGateway sets what the next Translate builds gateway nodes' resources
// from (nil: gateways get listeners with no routes). Call it from the
// goroutine that calls Translate.
func (t *Translator) SetGateway(g *Gateway) { t.gatewayIn = g }

// gatewayBuild is one Mesh's gateway resources, shared by every gateway
// node but its listeners' addresses.
type gatewayBuild struct {
	routes  *routev3.RouteConfiguration
	filters []*hcmv3.HttpFilter
	// clusters and endpoints are the gateway's own: a cluster per remote
	// JWKS, and a cluster and an empty load assignment per routed service
	// the model does not know yet (so its routes answer 503 until it
	// appears, as the agents' do).
	clusters, endpoints Set
}

// Gateway route configuration details.
const (
	gatewayRedirectSuffix = "/https"
	gatewayRedirectRoute  = "https-redirect"
	defaultClockSkew      = 30 * time.Second
	defaultJWKSRefresh    = 5 * time.Minute
)

// buildGateway translates the gateway input against the Mesh's services;
// it returns prev when the result is the same, so unchanged gateway nodes
// keep their resources.
func buildGateway(in *Gateway, m *Mesh, prev *gatewayBuild) (*gatewayBuild, error) {
	if in == nil {
		in = &Gateway{}
	}
	g := &gatewayBuild{clusters: Set{}, endpoints: Set{}}
	jwt, err := jwtAuthn(in, g)
	if err != nil {
		return nil, err
	}
	if g.filters, err = gatewayFilters(in.Config, jwt); err != nil {
		return nil, err
	}
	if g.routes, err = gatewayRoutes(in.Config, m, g); err != nil {
		return nil, err
	}
	if prev != nil && prev.equal(g) {
		return prev, nil
	}
	for _, s := range []Set{g.clusters, g.endpoints, {wire.GatewayRoute: g.routes}} {
		if err := validateSet(s); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	return g, nil
}

func (g *gatewayBuild) equal(o *gatewayBuild) bool {
	if !proto.Equal(g.routes, o.routes) || len(g.filters) != len(o.filters) || !equalSets(g.clusters, o.clusters) || !equalSets(g.endpoints, o.endpoints) {
		return false
	}
	for i := range g.filters {
		if !proto.Equal(g.filters[i], o.filters[i]) {
			return false
		}
	}
	return true
}

func equalSets(a, b Set) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !proto.Equal(v, w) {
			return false
		}
	}
	return true
}

// gatewayResources are a gateway node's own resources: its two listeners
// (addresses from its metadata), the route configuration and the
// gateway's own clusters.
func gatewayResources(n model.Node, g *gatewayBuild) (Resources, error) {
	r := Resources{Clusters: Set{}, Endpoints: Set{}, Listeners: Set{}, Routes: Set{wire.GatewayRoute: g.routes}}
	for k, v := range g.clusters {
		r.Clusters[k] = v
	}
	for k, v := range g.endpoints {
		r.Endpoints[k] = v
	}
	for _, l := range []struct{ name, addr, def, stat string }{
		{wire.GatewayHTTPSListener, n.HTTPSAddr, wire.DefaultGatewayHTTPSAddr, "gateway_https"},
		{wire.GatewayHTTPListener, n.HTTPAddr, wire.DefaultGatewayHTTPAddr, "gateway_http"},
	} {
		lis, err := httpListener(l.name, cmpOr(l.addr, l.def), &hcmv3.HttpConnectionManager{
			CodecType:  hcmv3.HttpConnectionManager_AUTO,
			StatPrefix: l.stat,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				ConfigSource: adsSource(), RouteConfigName: wire.GatewayRoute,
			}},
			HttpFilters: g.filters,
			// The gateway is the edge: X-Forwarded-For is appended to, and
			// internal headers of clients are not trusted.
			UseRemoteAddress: wrapperspb.Bool(true),
		})
		if err != nil {
			return Resources{}, fmt.Errorf("gateway listener %s: %w", l.name, err)
		}
		r.Listeners[l.name] = lis
	}
	return r, nil
}

func typedFilter(name string, m proto.Message) (*hcmv3.HttpFilter, error) {
	a, err := deterministicAny(m)
	if err != nil {
		return nil, fmt.Errorf("filter %s: %w", name, err)
	}
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// gatewayFilters: header_mutation (strip forgeable claim headers) →
// [api key] → jwt_authn → rbac (per-route claim rules) → router.
func gatewayFilters(c config.ControlGateway, jwt *jwtv3.JwtAuthentication) ([]*hcmv3.HttpFilter, error) {
	var strip []string
	for _, p := range c.JWTProviders {
		for _, h := range p.AllClaimHeaders() {
			strip = append(strip, strings.ToLower(h))
		}
	}
	slices.Sort(strip)
	strip = slices.Compact(strip)
	var out []*hcmv3.HttpFilter
	if len(strip) > 0 {
		muts := make([]*mutationrulesv3.HeaderMutation, 0, len(strip))
		for _, h := range strip {
			muts = append(muts, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Remove{Remove: h}})
		}
		f, err := typedFilter(wire.HeaderMutationFilter, &headermutationv3.HeaderMutation{
			Mutations: &headermutationv3.Mutations{RequestMutations: muts}})
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	if anyCORS(c) {
		f, err := typedFilter(wire.CORSFilter, &corsv3.Cors{})
		if err != nil {
			return nil, err
		}
		out = append(out, f)
		jwt.BypassCorsPreflight = true
	}
	f, err := typedFilter(wire.JWTAuthnFilter, jwt)
	if err != nil {
		return nil, err
	}
	out = append(out, f)
	if len(c.APIKeys) > 0 {
		keys := make([]any, 0, len(c.APIKeys))
		for _, k := range c.APIKeys {
			keys = append(keys, map[string]any{"subject": k.Subject, "hash": k.Hash})
		}
		f, err := typedStructFilter(wire.APIKeyFilter, wire.APIKeyAuthType, map[string]any{
			"keys": keys, "header": strings.ToLower(cmpOr(c.APIKeyHeader, wire.DefaultAPIKeyHeader)),
		})
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	// No rules: the filter enforces only the routes' RBACPerRoute.
	if f, err = typedFilter(wire.RBACFilter, &rbacfilterv3.RBAC{}); err != nil {
		return nil, err
	}
	out = append(out, f)
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	return append(out, router), nil
}

func typedStruct(typeURL string, v map[string]any) (*anypb.Any, error) {
	s, err := structpb.NewStruct(v)
	if err != nil {
		return nil, err
	}
	return deterministicAny(&xdstypev3.TypedStruct{TypeUrl: typeURL, Value: s})
}

func typedStructFilter(name, typeURL string, v map[string]any) (*hcmv3.HttpFilter, error) {
	a, err := typedStruct(typeURL, v)
	if err != nil {
		return nil, fmt.Errorf("filter %s: %w", name, err)
	}
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// jwtAuthn is the jwt_authn filter's config: one provider per configured
// provider, a named requirement per (provider, required|optional), no
// rules (every route names its requirement or disables the filter).
func jwtAuthn(in *Gateway, g *gatewayBuild) (*jwtv3.JwtAuthentication, error) {
	out := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}, RequirementMap: map[string]*jwtv3.JwtRequirement{}}
	for i, p := range in.Config.JWTProviders {
		at := fmt.Sprintf("control.gateway.jwt_providers[%d] (%s)", i, p.Name)
		jp := &jwtv3.JwtProvider{
			Issuer:            p.Issuer,
			Audiences:         p.Audiences,
			Forward:           false,
			FromCookies:       p.FromCookies,
			PayloadInMetadata: wire.JWTPayloadMetadataKey,
			ClockSkewSeconds:  uint32(durationOr(p.ClockSkew, defaultClockSkew) / time.Second),
		}
		for _, h := range p.FromHeaders {
			jp.FromHeaders = append(jp.FromHeaders, &jwtv3.JwtHeader{Name: strings.ToLower(h.Name), ValuePrefix: h.Prefix})
		}
		headers := p.AllClaimHeaders()
		for _, claim := range sortedKeys(headers) {
			jp.ClaimToHeaders = append(jp.ClaimToHeaders, &jwtv3.JwtClaimToHeader{ClaimName: claim, HeaderName: strings.ToLower(headers[claim])})
		}
		if p.JWKSFile != "" {
			keys, ok := in.JWKS[p.Name]
			if !ok {
				return nil, fmt.Errorf("%s: the keys of jwks_file %s were not read", at, p.JWKSFile)
			}
			if err := checkJWKS(keys); err != nil {
				return nil, fmt.Errorf("%s: jwks_file %s: %w", at, p.JWKSFile, err)
			}
			jp.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: keys}}}
		} else {
			c, err := jwksCluster(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", at, err)
			}
			g.clusters[c.Name] = c
			jp.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri: &corev3.HttpUri{
					Uri:              p.JWKSURL,
					HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: c.Name},
					Timeout:          durationpb.New(5 * time.Second),
				},
				CacheDuration: durationpb.New(durationOr(p.JWKSRefresh, defaultJWKSRefresh)),
			}}
		}
		out.Providers[p.Name] = jp
		out.RequirementMap[p.Name] = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: p.Name}}
		out.RequirementMap[optionalRequirement(p.Name)] = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
			RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: []*jwtv3.JwtRequirement{
				{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: p.Name}},
				{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}},
			}}}}
	}
	return out, nil
}

// optionalRequirement names the requirement "a token of provider, or
// none; a bad one is refused".
func optionalRequirement(provider string) string { return provider + ":optional" }

func checkJWKS(s string) error {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return fmt.Errorf("not a JWKS (JSON with \"keys\"): %w", err)
	}
	if len(set.Keys) == 0 {
		return fmt.Errorf("no keys")
	}
	return nil
}

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jwksCluster is the cluster a remote JWKS is fetched through (Envoy's
// remote_jwks needs one): the URL's host by DNS, TLS for https.
func jwksCluster(p config.JWTProvider) (*clusterv3.Cluster, error) {
	u, err := url.Parse(p.JWKSURL)
	if err != nil {
		return nil, fmt.Errorf("jwks_url: %w", err)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("jwks_url: port %q", port)
	}
	name := wire.JWKSClusterPrefix + p.Name
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS},
		DnsLookupFamily:      clusterv3.Cluster_V4_PREFERRED,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, n)}},
			}}}},
		},
	}
	if net.ParseIP(host) != nil {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	}
	if u.Scheme == "https" {
		tc, err := deterministicAny(&tlsv3.UpstreamTlsContext{Sni: host})
		if err != nil {
			return nil, err
		}
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tc}}
	}
	return c, nil
}

// gatewayRoutes is the mesh_gateway route configuration: a virtual host per
// configured host, routes in file order. A route not marked plaintext is
// preceded by its twin matching :scheme http, which redirects to HTTPS,
// so the HTTP listener serves only plaintext routes; each virtual host
// ends with a catch-all redirect for the HTTP listener, and a "*" virtual
// host holding only that redirect is added when no route names "*".
func gatewayRoutes(c config.ControlGateway, m *Mesh, g *gatewayBuild) (*routev3.RouteConfiguration, error) {
	rc := &routev3.RouteConfiguration{Name: wire.GatewayRoute, ValidateClusters: wrapperspb.Bool(false)}
	byHost := map[string]*routev3.VirtualHost{}
	redirect := httpsRedirect(c.HTTPSPort)
	vhostFor := func(host string) *routev3.VirtualHost {
		if vh, ok := byHost[host]; ok {
			return vh
		}
		vh := &routev3.VirtualHost{Name: host, Domains: []string{host}}
		byHost[host] = vh
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
		return vh
	}
	for i := range c.Routes {
		cr := &c.Routes[i]
		at := fmt.Sprintf("control.gateway.routes[%d]", i)
		r, err := gatewayRoute(cr, i, c, m, g)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		vh := vhostFor(strings.ToLower(cmpOr(cr.Host, "*")))
		if !cr.Plaintext {
			twin := &routev3.Route{Name: r.Name + gatewayRedirectSuffix, Match: proto.Clone(r.Match).(*routev3.RouteMatch), Action: redirect}
			twin.Match.Headers = append(twin.Match.Headers, schemeHTTP())
			vh.Routes = append(vh.Routes, twin)
		}
		vh.Routes = append(vh.Routes, r)
	}
	vhostFor("*")
	for _, vh := range rc.VirtualHosts {
		vh.Routes = append(vh.Routes, &routev3.Route{
			Name:   gatewayRedirectRoute,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{schemeHTTP()}},
			Action: redirect,
		})
	}
	return rc, nil
}

func schemeHTTP() *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: ":scheme", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "http"}}}}
}

func httpsRedirect(port int) *routev3.Route_Redirect {
	return &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
		SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true},
		PortRedirect:           uint32(port),
	}}
}

func gatewayRoute(cr *config.GatewayRoute, i int, c config.ControlGateway, m *Mesh, g *gatewayBuild) (*routev3.Route, error) {
	r, err := buildRoute(cr, routeName(cr, i), &routeCtx{
		policyOf: m.policyOf,
		ensure:   func(cluster string) error { return m.gatewayEnsureCluster(cluster, g) },
	})
	if err != nil {
		return nil, err
	}
	pf, err := gatewayAuth(cr.Auth, c)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if cr.CORS.Set() {
		if pf[wire.CORSFilter], err = deterministicAny(corsPolicy(cr.CORS)); err != nil {
			return nil, fmt.Errorf("cors: %w", err)
		}
	}
	r.TypedPerFilterConfig = pf
	return r, nil
}

func (m *Mesh) policyOf(service string) config.Policy {
	if p, ok := m.policies[service]; ok {
		return p
	}
	return m.configured.For(service)
}

// gatewayEnsureCluster gives the gateway its own cluster (with the
// configured policy) and an empty load assignment for a routed service
// the model does not know yet.
func (m *Mesh) gatewayEnsureCluster(service string, g *gatewayBuild) error {
	if _, ok := m.Clusters[service]; ok {
		return nil
	}
	if _, ok := g.clusters[service]; ok {
		return nil
	}
	s := &model.Service{Name: service, Policy: m.configured.For(service)}
	c, err := Cluster(s)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", service, err)
	}
	g.clusters[service] = c
	g.endpoints[service] = LoadAssignment(s)
	return nil
}

// gatewayAuth is a route's typed_per_filter_config: the jwt_authn
// requirement (or disabled), the API key requirement, and the claim rules
// as an RBAC policy on the verified payload (jwt_authn's
// payload_in_metadata).
func gatewayAuth(a config.RouteAuth, c config.ControlGateway) (map[string]*anypb.Any, error) {
	req := a.Requirement()
	out := map[string]*anypb.Any{}
	jwt := &jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_Disabled{Disabled: true}}
	if a.JWT != "" {
		name := a.JWT
		// Optional, or a JWT that an API key may stand in for: a missing
		// token passes jwt_authn, a bad one does not.
		if req == config.AuthOptional || a.APIKey {
			name = optionalRequirement(a.JWT)
		}
		jwt.RequirementSpecifier = &jwtv3.PerRouteConfig_RequirementName{RequirementName: name}
	}
	var err error
	if out[wire.JWTAuthnFilter], err = deterministicAny(jwt); err != nil {
		return nil, err
	}
	if a.APIKey {
		if out[wire.APIKeyFilter], err = typedStruct(wire.APIKeyPerRouteType, map[string]any{
			"require": req, "or_jwt": a.JWT,
		}); err != nil {
			return nil, err
		}
	} else if len(c.APIKeys) > 0 {
		if out[wire.APIKeyFilter], err = typedStruct(wire.APIKeyPerRouteType, map[string]any{"require": config.AuthNone}); err != nil {
			return nil, err
		}
	}
	if claims := a.AllClaims(); len(claims) > 0 {
		rules, err := claimRules(claims)
		if err != nil {
			return nil, err
		}
		if out[wire.RBACFilter], err = deterministicAny(&rbacfilterv3.RBACPerRoute{Rbac: &rbacfilterv3.RBAC{Rules: rules}}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ClaimPolicy names the RBAC policy holding a route's claim rules.
const ClaimPolicy = "claims"

// claimRules: allow only when every claim rule holds on the verified
// payload. A rule holds when the claim is the value, a list containing it,
// or a space-separated string containing it (OAuth's scope).
func claimRules(claims map[string]string) (*rbacv3.RBAC, error) {
	var ids []*rbacv3.Principal
	for _, claim := range sortedKeys(claims) {
		want := claims[claim]
		word := `(.* )?` + regexp.QuoteMeta(want) + `( .*)?`
		ids = append(ids, &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: &matcherv3.MetadataMatcher{
			Filter: wire.JWTAuthnFilter,
			Path: []*matcherv3.MetadataMatcher_PathSegment{
				{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: wire.JWTPayloadMetadataKey}},
				{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: claim}},
			},
			Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_OrMatch{OrMatch: &matcherv3.OrMatcher{ValueMatchers: []*matcherv3.ValueMatcher{
				{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: word}}}}},
				{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{
					MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: want}}}}}}}},
			}}}},
		}}})
	}
	return &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{ClaimPolicy: {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}},
	}}}, nil
}

// deterministicAny packs m with map entries in a stable order, so equal
// configs give equal bytes (and equal versions: no spurious pushes).
func deterministicAny(m proto.Message) (*anypb.Any, error) {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, err
	}
	return a, nil
}

func anyCORS(c config.ControlGateway) bool {
	for _, r := range c.Routes {
		if r.CORS.Set() {
			return true
		}
	}
	return false
}

// corsPolicy is a route's CORS policy; "*" is Envoy's any origin.
func corsPolicy(c config.RouteCORS) *corsv3.CorsPolicy {
	p := &corsv3.CorsPolicy{
		AllowMethods:  strings.Join(c.AllowMethods, ","),
		AllowHeaders:  strings.ToLower(strings.Join(c.AllowHeaders, ",")),
		ExposeHeaders: strings.ToLower(strings.Join(c.ExposeHeaders, ",")),
	}
	for _, o := range c.AllowOrigins {
		p.AllowOriginStringMatch = append(p.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
	}
	if c.MaxAge > 0 {
		p.MaxAge = strconv.Itoa(int(c.MaxAge / time.Second))
	}
	if c.AllowCredentials {
		p.AllowCredentials = wrapperspb.Bool(true)
	}
	return p
}
