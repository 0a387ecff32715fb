package routematch

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// JWTAuthnFilter is the name under which a route's typed_per_filter_config
// carries its JWT requirement (the standard jwt_authn filter's name).
const JWTAuthnFilter = "envoy.filters.http.jwt_authn"

// Kind is what a route does with a request it matches.
type Kind uint8

const (
	// Forward sends the request to a cluster (Cluster or Clusters).
	Forward Kind = iota
	// RedirectKind answers with a redirect (Route.Redirect).
	RedirectKind
	// DirectKind answers with a fixed response (Route.Direct).
	DirectKind
)

// Route is one compiled route. It is shared by every request it matches
// and must not be modified.
type Route struct {
	// VirtualHost and Index say where the route is in the configuration;
	// Name is its name there (may be empty).
	VirtualHost string
	Index       int
	Name        string

	// Kind says which of the actions below applies.
	Kind Kind

	// Cluster is the destination of a single-cluster Forward route;
	// Clusters (with weights) of a weighted one. Exactly one is set.
	Cluster  string
	Clusters []WeightedCluster

	// PrefixRewrite replaces the matched path prefix (or the whole path of
	// an exact match); RegexRewrite replaces every match of a pattern in
	// the path. At most one is set. HostRewrite replaces the Host.
	PrefixRewrite string
	RegexRewrite  *RegexRewrite
	HostRewrite   string

	// Timeout is the route's timeout; TimeoutSet says whether the
	// configuration set it (Envoy's default is 15s; 0 disables it).
	Timeout    time.Duration
	TimeoutSet bool
	// Retry is the route's retry policy (the virtual host's when the
	// route has none); nil for none.
	Retry *RetryPolicy

	// Redirect and Direct are the answers of Redirect and Direct routes.
	Redirect *Redirect
	Direct   *DirectResponse

	// JWT is the route's requirement for the jwt_authn filter (from
	// typed_per_filter_config, the route's over its virtual host's).
	JWT JWTPerRoute
	// Fault is the route's fault injection (typed_per_filter_config
	// [FaultFilter], the route's over its virtual host's); nil for none.
	Fault *Fault
	// Mirrors are the route's request_mirror_policies (a Forward route's).
	Mirrors []Mirror
	// HashPolicies are the route's hash_policy, in order (see Hash).
	HashPolicies []HashPolicy

	// PerFilterConfig is the route's typed_per_filter_config merged over
	// its virtual host's, for filters this package does not decode.
	PerFilterConfig map[string]*anypb.Any
	// Metadata is the route's metadata.
	Metadata *corev3.Metadata

	path    pathMatch
	hasPath bool
	headers []headerMatch
	query   []queryMatch
	grpc    bool
	mut     mutations
	total   uint64
}

// WeightedCluster is one destination of a weighted split.
type WeightedCluster struct {
	Name   string
	Weight uint32
	// Header mutations of this destination, applied after the route's.
	mut mutations
}

// RegexRewrite replaces every match of Pattern in the path by
// Substitution (Envoy's \1 group references, converted to Go's).
type RegexRewrite struct {
	Pattern      *regexp.Regexp
	Substitution string // in regexp.Expand form
}

// RetryPolicy is a route's retry policy.
type RetryPolicy struct {
	RetryOn              []string // "5xx", "gateway-error", "connect-failure", "retriable-status-codes", ...
	NumRetries           uint32   // default 1, as Envoy
	PerTryTimeout        time.Duration
	RetriableStatusCodes []uint32
	BackOffBase          time.Duration
	BackOffMax           time.Duration
	// OtherHost is set when the previous_hosts predicate asks for another
	// endpoint on each retry.
	OtherHost bool
}

// Redirect is a redirect answer. Empty fields keep the request's value.
type Redirect struct {
	Scheme        string
	Host          string
	Port          uint32
	Path          string // replaces the whole path
	PrefixRewrite string // replaces the matched prefix
	RegexRewrite  *RegexRewrite
	StripQuery    bool
	Code          int // 301 (default), 302, 303, 307, 308
}

// DirectResponse is a fixed answer.
type DirectResponse struct {
	Status int
	Body   []byte
}

// JWTPerRoute is a route's jwt_authn per-route configuration.
type JWTPerRoute struct {
	// Set says whether the route (or its virtual host) has one.
	Set bool
	// Disabled turns JWT verification off for the route.
	Disabled bool
	// RequirementName names an entry of the filter's requirement_map.
	RequirementName string
}

func (rt *Route) matches(r *http.Request, path string) bool {
	if rt.hasPath && !rt.path.matches(path) {
		return false
	}
	for i := range rt.headers {
		if !rt.headers[i].matches(r) {
			return false
		}
	}
	if len(rt.query) > 0 {
		raw := r.URL.RawQuery
		for i := range rt.query {
			if !rt.query[i].matches(raw) {
				return false
			}
		}
	}
	if rt.grpc && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return false
	}
	return true
}

// Matches reports whether the route's conditions hold for r, ignoring the
// virtual host.
func (rt *Route) Matches(r *http.Request) bool { return rt.matches(r, r.URL.EscapedPath()) }

func compileRoute(r *routev3.Route, v *routev3.VirtualHost, outer mutations, innerWins bool, vretry *RetryPolicy) (*Route, error) {
	rt := &Route{Name: r.GetName(), Metadata: r.GetMetadata(), Retry: vretry}
	if err := rt.compileMatch(r.GetMatch()); err != nil {
		return nil, fmt.Errorf("match: %w", err)
	}
	own, err := compileMutations(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(),
		r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	rt.mut = nest(own, outer, innerWins)
	if err := rt.compilePerFilter(v.GetTypedPerFilterConfig(), r.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		rt.Kind = Forward
		if err := rt.compileForward(a.Route); err != nil {
			return nil, fmt.Errorf("route: %w", err)
		}
	case *routev3.Route_Redirect:
		rt.Kind = RedirectKind
		if rt.Redirect, err = compileRedirect(a.Redirect); err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
	case *routev3.Route_DirectResponse:
		rt.Kind = DirectKind
		if rt.Direct, err = compileDirect(a.DirectResponse); err != nil {
			return nil, fmt.Errorf("direct_response: %w", err)
		}
	case nil:
		return nil, fmt.Errorf("action: missing (route, redirect or direct_response)")
	default:
		return nil, fmt.Errorf("action: %T is not supported", a)
	}
	return rt, nil
}

func (rt *Route) compileMatch(m *routev3.RouteMatch) error {
	if m == nil {
		return fmt.Errorf("missing")
	}
	switch {
	case m.GetRuntimeFraction() != nil:
		return fmt.Errorf("runtime_fraction: not supported")
	case len(m.GetCookies()) > 0:
		return fmt.Errorf("cookies: not supported")
	case m.GetTlsContext() != nil:
		return fmt.Errorf("tls_context: not supported")
	case len(m.GetDynamicMetadata()) > 0:
		return fmt.Errorf("dynamic_metadata: not supported")
	case len(m.GetFilterState()) > 0:
		return fmt.Errorf("filter_state: not supported")
	}
	fold := m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	rt.hasPath = true
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rt.path = pathMatch{kind: pathPrefix, value: p.Prefix, caseFold: fold}
		rt.hasPath = p.Prefix != ""
	case *routev3.RouteMatch_Path:
		rt.path = pathMatch{kind: pathExact, value: p.Path, caseFold: fold}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		if strings.HasSuffix(p.PathSeparatedPrefix, "/") || strings.ContainsAny(p.PathSeparatedPrefix, "?#") {
			return fmt.Errorf("path_separated_prefix: %q may not end in / or hold ? or #", p.PathSeparatedPrefix)
		}
		rt.path = pathMatch{kind: pathSeparatedPrefix, value: p.PathSeparatedPrefix, caseFold: fold}
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return fmt.Errorf("safe_regex: %w", err)
		}
		rt.path = pathMatch{kind: pathRegex, re: re}
	case nil:
		return fmt.Errorf("path: missing (prefix, path, safe_regex or path_separated_prefix)")
	default:
		return fmt.Errorf("path: %T is not supported", p)
	}
	for i, h := range m.GetHeaders() {
		hm, err := compileHeader(h)
		if err != nil {
			return fmt.Errorf("headers[%d] %q: %w", i, h.GetName(), err)
		}
		rt.headers = append(rt.headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qm, err := compileQuery(q)
		if err != nil {
			return fmt.Errorf("query_parameters[%d] %q: %w", i, q.GetName(), err)
		}
		rt.query = append(rt.query, qm)
	}
	rt.grpc = m.GetGrpc() != nil
	return nil
}

func (rt *Route) compilePerFilter(vhost, route map[string]*anypb.Any) error {
	if len(vhost)+len(route) == 0 {
		return nil
	}
	rt.PerFilterConfig = make(map[string]*anypb.Any, len(vhost)+len(route))
	for k, v := range vhost {
		rt.PerFilterConfig[k] = v
	}
	for k, v := range route {
		rt.PerFilterConfig[k] = v
	}
	if a, ok := rt.PerFilterConfig[FaultFilter]; ok {
		f, err := compileFault(a)
		if err != nil {
			return fmt.Errorf("typed_per_filter_config[%s]: %w", FaultFilter, err)
		}
		rt.Fault = f
	}
	a, ok := rt.PerFilterConfig[JWTAuthnFilter]
	if !ok {
		return nil
	}
	var pr jwtv3.PerRouteConfig
	if err := a.UnmarshalTo(&pr); err != nil {
		return fmt.Errorf("typed_per_filter_config[%s]: want a jwt_authn PerRouteConfig: %w", JWTAuthnFilter, err)
	}
	rt.JWT = JWTPerRoute{Set: true, Disabled: pr.GetDisabled(), RequirementName: pr.GetRequirementName()}
	if !rt.JWT.Disabled && rt.JWT.RequirementName == "" {
		return fmt.Errorf("typed_per_filter_config[%s]: neither disabled nor requirement_name", JWTAuthnFilter)
	}
	return nil
}

func (rt *Route) compileForward(a *routev3.RouteAction) error {
	switch {
	case a.GetClusterHeader() != "":
		return fmt.Errorf("cluster_header: not supported")
	case a.GetClusterSpecifierPlugin() != "" || a.GetInlineClusterSpecifierPlugin() != nil:
		return fmt.Errorf("cluster_specifier_plugin: not supported")
	case a.GetPathRewritePolicy() != nil:
		return fmt.Errorf("path_rewrite_policy: not supported")
	case a.GetHostRewriteHeader() != "" || a.GetHostRewritePathRegex() != nil:
		return fmt.Errorf("host_rewrite_header/host_rewrite_path_regex: not supported")
	case a.GetRetryPolicyTypedConfig() != nil:
		return fmt.Errorf("retry_policy_typed_config: not supported")
	case a.GetHedgePolicy() != nil:
		return fmt.Errorf("hedge_policy: not supported")
	case a.GetMetadataMatch() != nil:
		return fmt.Errorf("metadata_match: not supported")
	}
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if c.Cluster == "" {
			return fmt.Errorf("cluster: empty")
		}
		rt.Cluster = c.Cluster
	case *routev3.RouteAction_WeightedClusters:
		if err := rt.compileWeighted(c.WeightedClusters); err != nil {
			return fmt.Errorf("weighted_clusters: %w", err)
		}
	case nil:
		return fmt.Errorf("cluster: missing (cluster or weighted_clusters)")
	}
	var err error
	if rt.Mirrors, err = compileMirrors(a.GetRequestMirrorPolicies()); err != nil {
		return err
	}
	if rt.HashPolicies, err = compileHashPolicies(a.GetHashPolicy()); err != nil {
		return err
	}
	if a.GetPrefixRewrite() != "" && a.GetRegexRewrite() != nil {
		return fmt.Errorf("prefix_rewrite and regex_rewrite: at most one")
	}
	rt.PrefixRewrite = a.GetPrefixRewrite()
	if a.GetRegexRewrite() != nil {
		rr, err := compileRegexRewrite(a.GetRegexRewrite())
		if err != nil {
			return fmt.Errorf("regex_rewrite: %w", err)
		}
		rt.RegexRewrite = rr
	}
	if a.GetAutoHostRewrite().GetValue() {
		return fmt.Errorf("auto_host_rewrite: not supported")
	}
	rt.HostRewrite = a.GetHostRewriteLiteral()
	if a.GetTimeout() != nil {
		if err := a.GetTimeout().CheckValid(); err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		rt.Timeout, rt.TimeoutSet = a.GetTimeout().AsDuration(), true
	}
	if a.GetRetryPolicy() != nil {
		rp, err := compileRetry(a.GetRetryPolicy())
		if err != nil {
			return fmt.Errorf("retry_policy: %w", err)
		}
		rt.Retry = rp
	}
	return nil
}

func (rt *Route) compileWeighted(w *routev3.WeightedCluster) error {
	if w.GetHeaderName() != "" || w.GetRuntimeKeyPrefix() != "" {
		return fmt.Errorf("header_name/runtime_key_prefix: not supported")
	}
	if len(w.GetClusters()) == 0 {
		return fmt.Errorf("clusters: empty")
	}
	for i, c := range w.GetClusters() {
		if c.GetName() == "" {
			return fmt.Errorf("clusters[%d]: name: empty (cluster_header is not supported)", i)
		}
		if len(c.GetTypedPerFilterConfig()) > 0 || c.GetHostRewriteLiteral() != "" || c.GetMetadataMatch() != nil {
			return fmt.Errorf("clusters[%d] %q: only name, weight and header mutations are supported", i, c.GetName())
		}
		m, err := compileMutations(c.GetRequestHeadersToAdd(), c.GetRequestHeadersToRemove(),
			c.GetResponseHeadersToAdd(), c.GetResponseHeadersToRemove())
		if err != nil {
			return fmt.Errorf("clusters[%d] %q: %w", i, c.GetName(), err)
		}
		wt := c.GetWeight().GetValue()
		rt.total += uint64(wt)
		rt.Clusters = append(rt.Clusters, WeightedCluster{Name: c.GetName(), Weight: wt, mut: m})
	}
	if rt.total == 0 {
		return fmt.Errorf("clusters: the weights sum to 0")
	}
	if tw := w.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != rt.total {
		return fmt.Errorf("total_weight: %d, but the weights sum to %d", tw.GetValue(), rt.total)
	}
	return nil
}

func compileRetry(p *routev3.RetryPolicy) (*RetryPolicy, error) {
	rp := &RetryPolicy{NumRetries: 1, RetriableStatusCodes: p.GetRetriableStatusCodes()}
	for _, s := range strings.Split(p.GetRetryOn(), ",") {
		if s = strings.TrimSpace(s); s != "" {
			rp.RetryOn = append(rp.RetryOn, s)
		}
	}
	if p.GetNumRetries() != nil {
		rp.NumRetries = p.GetNumRetries().GetValue()
	}
	if d := p.GetPerTryTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, fmt.Errorf("per_try_timeout: %w", err)
		}
		rp.PerTryTimeout = d.AsDuration()
	}
	if b := p.GetRetryBackOff(); b != nil {
		rp.BackOffBase = b.GetBaseInterval().AsDuration()
		rp.BackOffMax = b.GetMaxInterval().AsDuration()
		if rp.BackOffBase <= 0 {
			return nil, fmt.Errorf("retry_back_off.base_interval: must be > 0")
		}
		if rp.BackOffMax != 0 && rp.BackOffMax < rp.BackOffBase {
			return nil, fmt.Errorf("retry_back_off.max_interval: below base_interval")
		}
	}
	for i, h := range p.GetRetryHostPredicate() {
		if !strings.HasSuffix(h.GetName(), "previous_hosts") {
			return nil, fmt.Errorf("retry_host_predicate[%d] %q: not supported", i, h.GetName())
		}
		rp.OtherHost = true
	}
	return rp, nil
}
