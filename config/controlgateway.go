package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ControlGateway is what mesh control pushes to every mesh gateway over
// xDS: the identity providers, the API keys (hashed) and the routes into
// the mesh. Certificates stay on the gateway's VM (the gateway section).
type ControlGateway struct {
	JWTProviders []JWTProvider `mapstructure:"jwt_providers" yaml:"jwt_providers"`
	// APIKeys are accepted on routes whose auth says api_key: true.
	APIKeys []GatewayAPIKey `mapstructure:"api_keys" yaml:"api_keys"`
	// APIKeyHeader carries an API key (default x-api-key).
	APIKeyHeader string `mapstructure:"api_key_header" yaml:"api_key_header"`
	// HTTPSPort is the port the plain-HTTP listener's redirects name
	// (0: none, for a load balancer that maps 443 to the gateway).
	HTTPSPort int            `mapstructure:"https_port" yaml:"https_port,omitempty"`
	Routes    []GatewayRoute `mapstructure:"routes" yaml:"routes"`
}

// JWTProvider is an identity provider whose tokens the gateways verify.
type JWTProvider struct {
	Name      string   `mapstructure:"name" yaml:"name"`
	Issuer    string   `mapstructure:"issuer" yaml:"issuer"`
	Audiences []string `mapstructure:"audiences" yaml:"audiences"`
	// JWKSFile (read by mesh control and pushed inline) or JWKSURL (read
	// by each gateway, refreshed every JWKSRefresh): exactly one.
	JWKSFile    string        `mapstructure:"jwks_file" yaml:"jwks_file,omitempty"`
	JWKSURL     string        `mapstructure:"jwks_url" yaml:"jwks_url,omitempty"`
	JWKSRefresh time.Duration `mapstructure:"jwks_refresh" yaml:"jwks_refresh,omitempty"`
	// ClaimsToHeaders forwards verified claims as request headers (claim:
	// header); incoming copies of those headers are always removed.
	ClaimsToHeaders map[string]string `mapstructure:"claims_to_headers" yaml:"claims_to_headers"`
	// ClaimHeaders is the same as a list, for claim names a map key
	// cannot hold (upper case, dots: https://example.com/roles).
	ClaimHeaders []ClaimHeader `mapstructure:"claim_headers" yaml:"claim_headers,omitempty"`
	// FromHeaders and FromCookies say where a token is; neither means the
	// Authorization header with the Bearer scheme.
	FromHeaders []TokenHeader `mapstructure:"from_headers" yaml:"from_headers,omitempty"`
	FromCookies []string      `mapstructure:"from_cookies" yaml:"from_cookies,omitempty"`
	// ClockSkew is tolerated on exp and nbf (default 30s).
	ClockSkew time.Duration `mapstructure:"clock_skew" yaml:"clock_skew,omitempty"`
}

// ClaimHeader forwards a claim in a header.
type ClaimHeader struct {
	Claim  string `mapstructure:"claim" yaml:"claim"`
	Header string `mapstructure:"header" yaml:"header"`
}

// ClaimRule requires a claim to equal or contain a value.
type ClaimRule struct {
	Claim    string `mapstructure:"claim" yaml:"claim"`
	Contains string `mapstructure:"contains" yaml:"contains"`
}

// AllClaimHeaders are ClaimsToHeaders and ClaimHeaders together.
func (p JWTProvider) AllClaimHeaders() map[string]string {
	out := make(map[string]string, len(p.ClaimsToHeaders)+len(p.ClaimHeaders))
	for c, h := range p.ClaimsToHeaders {
		out[c] = h
	}
	for _, ch := range p.ClaimHeaders {
		out[ch.Claim] = ch.Header
	}
	return out
}

// AllClaims are Claims and ClaimRules together.
func (a RouteAuth) AllClaims() map[string]string {
	out := make(map[string]string, len(a.Claims)+len(a.ClaimRules))
	for c, v := range a.Claims {
		out[c] = v
	}
	for _, r := range a.ClaimRules {
		out[r.Claim] = r.Contains
	}
	return out
}

// TokenHeader is a header carrying a token, after Prefix ("Bearer ").
type TokenHeader struct {
	Name   string `mapstructure:"name" yaml:"name"`
	Prefix string `mapstructure:"prefix" yaml:"prefix,omitempty"`
}

// GatewayAPIKey is an accepted API key, stored hashed ("sha256:<hex>",
// from mesh gateway hash-key), and whom it stands for.
type GatewayAPIKey struct {
	Subject string `mapstructure:"subject" yaml:"subject"`
	Hash    string `mapstructure:"hash" yaml:"hash"`
}

// GatewayRoute is one route into the mesh from a gateway
// (control.gateway.routes): a Route whose host picks it.
type GatewayRoute = Route

// Route is one route, of a gateway (control.gateway.routes) or of a
// service (control.services.<name>.routes): one schema and one
// translation to Envoy routes serve both. Routes are tried in order; on
// a gateway a request's host picks its routes first (an exact host
// before a wildcard, as Envoy does). Host, Auth, CORS and Plaintext are
// the gateway's; Subset, Mirror and Fault a service's (traffic.go).
type Route struct {
	// Name labels the route in metrics and logs (default route-<index>).
	Name string `mapstructure:"name" yaml:"name,omitempty"`
	// Host is exact (shop.example.com), a wildcard (*.example.com) or "*"
	// (the default).
	Host string `mapstructure:"host" yaml:"host,omitempty"`
	// Path, PathPrefix or PathRegex (RE2, whole path): at most one; none
	// matches every path.
	Path       string        `mapstructure:"path" yaml:"path,omitempty"`
	PathPrefix string        `mapstructure:"path_prefix" yaml:"path_prefix,omitempty"`
	PathRegex  string        `mapstructure:"path_regex" yaml:"path_regex,omitempty"`
	Methods    []string      `mapstructure:"methods" yaml:"methods,omitempty"`
	Headers    []HeaderMatch `mapstructure:"headers" yaml:"headers,omitempty"`
	Query      []QueryMatch  `mapstructure:"query" yaml:"query,omitempty"`
	Service    string        `mapstructure:"service" yaml:"service,omitempty"`
	// Subset sends to one subset of Service (of the route's own service
	// when Service is empty): the cluster orders/v2.
	Subset   string        `mapstructure:"subset" yaml:"subset,omitempty"`
	Split    []SplitTarget `mapstructure:"split" yaml:"split,omitempty"`
	Redirect RouteRedirect `mapstructure:"redirect" yaml:"redirect,omitempty"`
	// Mirror copies a share of the route's requests to another service
	// or subset; the copy's response is discarded.
	Mirror RouteMirror `mapstructure:"mirror" yaml:"mirror,omitempty"`
	// Fault injects delays and aborts into the route's requests.
	Fault RouteFault `mapstructure:"fault" yaml:"fault,omitempty"`
	// DirectResponse answers without calling a service.
	DirectResponse DirectResponse `mapstructure:"direct_response" yaml:"direct_response,omitempty"`
	// Rewrite replaces the matched path_prefix (or the whole path of an
	// exact path); RewriteRegex replaces matches of a pattern.
	Rewrite      string       `mapstructure:"rewrite" yaml:"rewrite,omitempty"`
	RewriteRegex RegexRewrite `mapstructure:"rewrite_regex" yaml:"rewrite_regex,omitempty"`
	HostRewrite  string       `mapstructure:"host_rewrite" yaml:"host_rewrite,omitempty"`
	// HeadersToAdd set request headers (replacing a value the client
	// sent); the response_ pair acts on the response.
	HeadersToAdd            map[string]string `mapstructure:"headers_to_add" yaml:"headers_to_add,omitempty"`
	HeadersToRemove         []string          `mapstructure:"headers_to_remove" yaml:"headers_to_remove,omitempty"`
	ResponseHeadersToAdd    map[string]string `mapstructure:"response_headers_to_add" yaml:"response_headers_to_add,omitempty"`
	ResponseHeadersToRemove []string          `mapstructure:"response_headers_to_remove" yaml:"response_headers_to_remove,omitempty"`
	// Timeout bounds the whole request (0: the service's policy timeout).
	Timeout time.Duration `mapstructure:"timeout" yaml:"timeout,omitempty"`
	Retries RouteRetries  `mapstructure:"retries" yaml:"retries,omitempty"`
	Auth    RouteAuth     `mapstructure:"auth" yaml:"auth,omitempty"`
	// CORS answers browsers' cross-origin checks for the route.
	CORS RouteCORS `mapstructure:"cors" yaml:"cors,omitempty"`
	// Plaintext also serves the route on the HTTP listener; otherwise
	// requests there are redirected to HTTPS.
	Plaintext bool `mapstructure:"plaintext" yaml:"plaintext,omitempty"`
}

// HeaderMatch matches a request header: Exact, Prefix or Regex (RE2,
// whole value), else its presence (or, with Absent, its absence); Invert
// negates it.
type HeaderMatch struct {
	Name   string `mapstructure:"name" yaml:"name"`
	Exact  string `mapstructure:"exact" yaml:"exact,omitempty"`
	Prefix string `mapstructure:"prefix" yaml:"prefix,omitempty"`
	Regex  string `mapstructure:"regex" yaml:"regex,omitempty"`
	Absent bool   `mapstructure:"absent" yaml:"absent,omitempty"`
	Invert bool   `mapstructure:"invert" yaml:"invert,omitempty"`
}

// QueryMatch matches a query parameter: Exact or Regex, else presence.
type QueryMatch struct {
	Name  string `mapstructure:"name" yaml:"name"`
	Exact string `mapstructure:"exact" yaml:"exact,omitempty"`
	Regex string `mapstructure:"regex" yaml:"regex,omitempty"`
}

// SplitTarget is one service (or subset) of a weighted split; weights
// are positive and sum to 100.
type SplitTarget struct {
	Service string `mapstructure:"service" yaml:"service,omitempty"`
	// Subset is a subset of Service (of the route's own service when
	// Service is empty).
	Subset string `mapstructure:"subset" yaml:"subset,omitempty"`
	Weight int    `mapstructure:"weight" yaml:"weight"`
}

// RegexRewrite replaces every match of Pattern (RE2) with Substitution
// (\1 refers to a group).
type RegexRewrite struct {
	Pattern      string `mapstructure:"pattern" yaml:"pattern"`
	Substitution string `mapstructure:"substitution" yaml:"substitution"`
}

// RouteRedirect answers with a redirect; empty fields keep the request's.
type RouteRedirect struct {
	Scheme     string `mapstructure:"scheme" yaml:"scheme,omitempty"`
	Host       string `mapstructure:"host" yaml:"host,omitempty"`
	Port       int    `mapstructure:"port" yaml:"port,omitempty"`
	Path       string `mapstructure:"path" yaml:"path,omitempty"`
	Prefix     string `mapstructure:"prefix" yaml:"prefix,omitempty"`
	StripQuery bool   `mapstructure:"strip_query" yaml:"strip_query,omitempty"`
	// Code is 301 (default), 302, 303, 307 or 308.
	Code int `mapstructure:"code" yaml:"code,omitempty"`
}

// Set reports whether the route redirects.
func (r RouteRedirect) Set() bool { return r != RouteRedirect{} }

// Set reports whether the route retries.
func (r RouteRetries) Set() bool {
	return r.Attempts != 0 || r.PerTryTimeout != 0 || len(r.RetryOn) > 0
}

// DirectResponse is a fixed answer (Status 0: none).
type DirectResponse struct {
	Status int    `mapstructure:"status" yaml:"status"`
	Body   string `mapstructure:"body" yaml:"body,omitempty"`
}

// RouteRetries retries a failed request (Envoy's retry policy names).
type RouteRetries struct {
	Attempts      int           `mapstructure:"attempts" yaml:"attempts"`
	PerTryTimeout time.Duration `mapstructure:"per_try_timeout" yaml:"per_try_timeout,omitempty"`
	RetryOn       []string      `mapstructure:"retry_on" yaml:"retry_on,omitempty"`
}

// RouteAuth is a route's authentication: a JWT from provider JWT and/or
// an API key; Require is required (the default when either is named),
// optional (a bad credential is refused, a missing one is not) or none.
// Claims are rules on the verified token: the claim equals the value or
// (a list, or a space-separated string such as scope) contains it.
type RouteAuth struct {
	JWT     string            `mapstructure:"jwt" yaml:"jwt,omitempty"`
	APIKey  bool              `mapstructure:"api_key" yaml:"api_key,omitempty"`
	Require string            `mapstructure:"require" yaml:"require,omitempty"`
	Claims  map[string]string `mapstructure:"claims" yaml:"claims,omitempty"`
	// ClaimRules is the same as a list, for claim names a map key cannot
	// hold (upper case, dots).
	ClaimRules []ClaimRule `mapstructure:"claim_rules" yaml:"claim_rules,omitempty"`
}

// RouteCORS is a route's CORS policy; it is on when AllowOrigins is set.
type RouteCORS struct {
	// AllowOrigins are exact origins (https://shop.example.com) or "*".
	AllowOrigins     []string      `mapstructure:"allow_origins" yaml:"allow_origins"`
	AllowMethods     []string      `mapstructure:"allow_methods" yaml:"allow_methods,omitempty"`
	AllowHeaders     []string      `mapstructure:"allow_headers" yaml:"allow_headers,omitempty"`
	ExposeHeaders    []string      `mapstructure:"expose_headers" yaml:"expose_headers,omitempty"`
	MaxAge           time.Duration `mapstructure:"max_age" yaml:"max_age,omitempty"`
	AllowCredentials bool          `mapstructure:"allow_credentials" yaml:"allow_credentials,omitempty"`
}

// Set reports whether the route has a CORS policy.
func (c RouteCORS) Set() bool { return len(c.AllowOrigins) > 0 }

// Requirement values.
const (
	AuthRequired = "required"
	AuthOptional = "optional"
	AuthNone     = "none"
)

// Requirement is the route's effective requirement.
func (a RouteAuth) Requirement() string {
	if a.Require != "" {
		return a.Require
	}
	if a.JWT != "" || a.APIKey {
		return AuthRequired
	}
	return AuthNone
}

var (
	apiKeyHashRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	methodRE     = regexp.MustCompile(`^[A-Z]+$`)
	providerRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)
)

var gatewayRetryOn = []string{"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes"}

func (g *ControlGateway) validate(v *validator) {
	const p = "control.gateway"
	providers := map[string]bool{}
	for i, jp := range g.JWTProviders {
		at := fmt.Sprintf("%s.jwt_providers[%d]", p, i)
		if v.check(at+".name", providerRE.MatchString(jp.Name), "%q is not a provider name (lowercase letters, digits, '-' and '_'); write e.g. idp", jp.Name) {
			v.check(at+".name", !providers[jp.Name], "%q is already the name of another provider", jp.Name)
			providers[jp.Name] = true
		}
		u, err := url.Parse(jp.Issuer)
		v.check(at+".issuer", jp.Issuer != "" && err == nil && (u.Scheme != "" || !strings.ContainsAny(jp.Issuer, " \t")),
			"is required (the tokens' iss, e.g. https://idp.example)")
		switch {
		case (jp.JWKSFile == "") == (jp.JWKSURL == ""):
			v.add(at+".jwks_file", "exactly one of jwks_file and jwks_url is required")
		case jp.JWKSURL != "":
			u, err := url.Parse(jp.JWKSURL)
			v.check(at+".jwks_url", err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "",
				"%q is not an http(s) URL; write e.g. https://idp.example/.well-known/jwks.json", jp.JWKSURL)
		}
		v.check(at+".jwks_refresh", jp.JWKSRefresh >= 0, "must not be negative")
		v.check(at+".clock_skew", jp.ClockSkew >= 0 && jp.ClockSkew <= 5*time.Minute, "must be between 0 and 5m, got %v", jp.ClockSkew)
		for claim, h := range jp.ClaimsToHeaders {
			v.check(fmt.Sprintf("%s.claims_to_headers.%s", at, claim), headerNameRE.MatchString(h) && !reservedHeader(h),
				"%q is not a header a claim can be forwarded in; write e.g. x-user-id", h)
		}
		for j, ch := range jp.ClaimHeaders {
			cp := fmt.Sprintf("%s.claim_headers[%d]", at, j)
			v.check(cp+".claim", ch.Claim != "", "is required")
			_, dup := jp.ClaimsToHeaders[ch.Claim]
			v.check(cp+".claim", !dup, "%q is also in claims_to_headers", ch.Claim)
			v.check(cp+".header", headerNameRE.MatchString(ch.Header) && !reservedHeader(ch.Header),
				"%q is not a header a claim can be forwarded in; write e.g. x-user-id", ch.Header)
		}
		for j, h := range jp.FromHeaders {
			v.check(fmt.Sprintf("%s.from_headers[%d].name", at, j), headerNameRE.MatchString(h.Name), "%q is not a valid HTTP header name", h.Name)
		}
		for j, c := range jp.FromCookies {
			v.check(fmt.Sprintf("%s.from_cookies[%d]", at, j), headerNameRE.MatchString(c), "%q is not a valid cookie name", c)
		}
	}
	v.check(p+".api_key_header", g.APIKeyHeader == "" || headerNameRE.MatchString(g.APIKeyHeader), "%q is not a valid HTTP header name", g.APIKeyHeader)
	v.check(p+".https_port", g.HTTPSPort >= 0 && g.HTTPSPort <= 65535, "must be a port (0 to 65535), got %d", g.HTTPSPort)
	hashes := map[string]int{}
	for i, k := range g.APIKeys {
		at := fmt.Sprintf("%s.api_keys[%d]", p, i)
		v.check(at+".subject", k.Subject != "", "is required (whom the key stands for)")
		if v.check(at+".hash", apiKeyHashRE.MatchString(k.Hash), "must be sha256:<64 lowercase hex digits> (mesh gateway hash-key prints it); never the key itself") {
			if j, dup := hashes[k.Hash]; dup {
				v.add(at+".hash", "the same key as api_keys[%d]", j)
			}
			hashes[k.Hash] = i
		}
	}
	validateRoutes(v, p+".routes", g.Routes, &routeScope{gateway: true, providers: providers, haveKeys: len(g.APIKeys) > 0})
}

// routeScope is what a route's validation needs to know of where it is:
// a gateway's (its providers and keys) or a service's (its own name and
// the subsets configured for every service).
type routeScope struct {
	gateway   bool
	providers map[string]bool
	haveKeys  bool
	// owner is the service whose routes these are; subsets are the
	// configured subsets by service.
	owner   string
	subsets map[string]map[string]bool
}

// validateRoutes checks an ordered list of routes, each on its own and
// against those before it (a route an earlier one shadows never fires).
func validateRoutes(v *validator, at string, routes []Route, sc *routeScope) {
	for i := range routes {
		routes[i].validate(v, fmt.Sprintf("%s[%d]", at, i), sc)
		for j := range i {
			if routes[j].shadows(&routes[i]) {
				what := routes[j].pathText()
				if sc.gateway {
					what = "host " + cmpOr(routes[j].Host, "*") + ", " + what
				}
				v.add(fmt.Sprintf("%s[%d]", at, i), "can never match: routes[%d] (%s) comes first and takes every request it would; put the narrower route first",
					j, what)
				break
			}
		}
	}
}

// shadows reports whether r takes every request later would (routes are
// tried in order): same host, no method, header or query condition, and
// a path that covers later's. Regexes are not compared.
func (r *Route) shadows(later *Route) bool {
	if !strings.EqualFold(cmpOr(r.Host, "*"), cmpOr(later.Host, "*")) {
		return false
	}
	if r.Plaintext != later.Plaintext && !r.Plaintext {
		return false // on the HTTP listener the later route may still be served
	}
	if r.sameMatch(later) {
		return true
	}
	if len(r.Methods)+len(r.Headers)+len(r.Query) > 0 || r.PathRegex != "" {
		return false
	}
	switch {
	case r.Path != "":
		return later.Path == r.Path
	case r.PathPrefix == "" || r.PathPrefix == "/":
		return true
	case later.Path != "":
		return strings.HasPrefix(later.Path, r.PathPrefix)
	case later.PathPrefix != "":
		return strings.HasPrefix(later.PathPrefix, r.PathPrefix)
	}
	return false
}

// sameMatch reports whether r and o match the very same requests as
// written: the same path condition and the same methods, headers and
// query conditions, in any order.
func (r *Route) sameMatch(o *Route) bool {
	if r.Path != o.Path || cmpOr(r.PathPrefix, "/") != cmpOr(o.PathPrefix, "/") && r.Path == "" && r.PathRegex == "" || r.PathRegex != o.PathRegex {
		return false
	}
	return sameSet(r.Methods, o.Methods) && sameSet(r.Headers, o.Headers) && sameSet(r.Query, o.Query)
}

func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func (r *Route) pathText() string {
	switch {
	case r.Path != "":
		return "path " + r.Path
	case r.PathPrefix != "":
		return "path_prefix " + r.PathPrefix
	case r.PathRegex != "":
		return "path_regex " + r.PathRegex
	}
	return "every path"
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// reservedHeader: headers a claim may not be forwarded in.
func reservedHeader(h string) bool {
	switch strings.ToLower(h) {
	case "host", "authorization", "cookie", "content-length", "transfer-encoding", "connection", "te", "upgrade":
		return true
	}
	return strings.HasPrefix(h, ":")
}

func (r *Route) validate(v *validator, at string, sc *routeScope) {
	providers, haveKeys := sc.providers, sc.haveKeys
	if !sc.gateway {
		r.validateService(v, at, sc)
	} else {
		r.validateGatewayOnly(v, at)
	}
	if r.Host != "" && r.Host != "*" {
		h := strings.TrimPrefix(r.Host, "*.")
		v.check(at+".host", hostnameRE.MatchString(h) && !strings.Contains(h, "*"),
			"%q is not a host name or a wildcard (*.example.com)", r.Host)
	}
	paths := 0
	for _, s := range []string{r.Path, r.PathPrefix, r.PathRegex} {
		if s != "" {
			paths++
		}
	}
	v.check(at+".path", paths <= 1, "path, path_prefix and path_regex: at most one")
	v.check(at+".path", r.Path == "" || strings.HasPrefix(r.Path, "/"), "%q must start with /", r.Path)
	v.check(at+".path_prefix", r.PathPrefix == "" || strings.HasPrefix(r.PathPrefix, "/"), "%q must start with /", r.PathPrefix)
	v.regex(at+".path_regex", r.PathRegex)
	for i, m := range r.Methods {
		v.check(fmt.Sprintf("%s.methods[%d]", at, i), methodRE.MatchString(m), "%q is not an HTTP method (upper case, e.g. GET)", m)
	}
	for i, h := range r.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", at, i)
		v.check(hp+".name", headerNameRE.MatchString(strings.TrimPrefix(h.Name, ":")), "%q is not a valid HTTP header name", h.Name)
		n := 0
		for _, s := range []string{h.Exact, h.Prefix, h.Regex} {
			if s != "" {
				n++
			}
		}
		v.check(hp, n <= 1 && (n == 0 || !h.Absent), "exact, prefix, regex and absent: at most one")
		v.regex(hp+".regex", h.Regex)
	}
	for i, q := range r.Query {
		qp := fmt.Sprintf("%s.query[%d]", at, i)
		v.check(qp+".name", q.Name != "", "is required")
		v.check(qp, q.Exact == "" || q.Regex == "", "exact and regex: at most one")
		v.regex(qp+".regex", q.Regex)
	}
	actions := 0
	for _, set := range []bool{r.Service != "" || r.Subset != "", len(r.Split) > 0, r.Redirect.Set(), r.DirectResponse.Status != 0} {
		if set {
			actions++
		}
	}
	if sc.gateway {
		v.check(at, actions == 1, "needs exactly one of service, split, redirect and direct_response (has %d)", actions)
	} else {
		// No action: the service's own default (its default_subset).
		v.check(at, actions <= 1, "service (or subset), split, redirect and direct_response: at most one (has %d)", actions)
	}
	if r.Service != "" {
		v.meshServiceName(at+".service", r.Service)
	}
	if len(r.Split) > 0 {
		sum := 0
		seen := map[SplitTarget]bool{}
		for i, s := range r.Split {
			sp := fmt.Sprintf("%s.split[%d]", at, i)
			if sc.gateway || s.Service != "" {
				v.meshServiceName(sp+".service", s.Service)
			}
			key := SplitTarget{Service: cmpOr(s.Service, sc.owner), Subset: s.Subset}
			v.check(sp, !seen[key], "%s is listed twice", targetText(key.Service, key.Subset))
			seen[key] = true
			v.check(sp+".weight", s.Weight > 0, "must be more than 0, got %d", s.Weight)
			sum += s.Weight
		}
		v.check(at+".split", sum == 100, "weights must add up to 100, got %d", sum)
	}
	if rd := r.Redirect; rd.Set() {
		v.check(at+".redirect.scheme", rd.Scheme == "" || rd.Scheme == "http" || rd.Scheme == "https", "%q is not http or https", rd.Scheme)
		v.check(at+".redirect.host", rd.Host == "" || hostnameRE.MatchString(rd.Host), "%q is not a host name", rd.Host)
		v.check(at+".redirect.port", rd.Port >= 0 && rd.Port <= 65535, "must be a port, got %d", rd.Port)
		v.check(at+".redirect.path", rd.Path == "" || rd.Prefix == "", "path and prefix: at most one")
		v.check(at+".redirect.prefix", rd.Prefix == "" || r.PathPrefix != "" || r.Path != "", "needs the route's path_prefix (or path) it replaces")
		v.check(at+".redirect.code", rd.Code == 0 || slices.Contains([]int{301, 302, 303, 307, 308}, rd.Code), "%d is not 301, 302, 303, 307 or 308", rd.Code)
	}
	if d := r.DirectResponse; d.Status != 0 {
		v.check(at+".direct_response.status", d.Status >= 200 && d.Status <= 599, "must be an HTTP status from 200 to 599, got %d", d.Status)
	}
	forwards := r.Service != "" || r.Subset != "" || len(r.Split) > 0 || !sc.gateway && !r.Redirect.Set() && r.DirectResponse.Status == 0
	for _, f := range []struct {
		key string
		set bool
	}{{"rewrite", r.Rewrite != ""}, {"rewrite_regex", r.RewriteRegex.Pattern != ""}, {"host_rewrite", r.HostRewrite != ""},
		{"timeout", r.Timeout != 0}, {"retries", r.Retries.Set()}} {
		v.check(at+"."+f.key, !f.set || forwards, "only applies to a route to a service or split")
	}
	v.check(at+".rewrite", r.Rewrite == "" || r.RewriteRegex.Pattern == "", "rewrite and rewrite_regex: at most one")
	v.check(at+".rewrite", r.Rewrite == "" || r.PathPrefix != "" || r.Path != "", "needs the route's path_prefix (or path) it replaces")
	v.regex(at+".rewrite_regex.pattern", r.RewriteRegex.Pattern)
	v.check(at+".rewrite_regex.pattern", r.RewriteRegex.Pattern != "" || r.RewriteRegex.Substitution == "", "is required")
	v.check(at+".host_rewrite", r.HostRewrite == "" || hostnameRE.MatchString(r.HostRewrite), "%q is not a host name", r.HostRewrite)
	for _, hs := range []struct {
		key string
		add map[string]string
		rm  []string
	}{{"headers_to", r.HeadersToAdd, r.HeadersToRemove}, {"response_headers_to", r.ResponseHeadersToAdd, r.ResponseHeadersToRemove}} {
		for h, val := range hs.add {
			v.check(fmt.Sprintf("%s.%s_add.%s", at, hs.key, h), headerNameRE.MatchString(h) && !reservedHeader(h) && !strings.ContainsAny(val, "\r\n\x00"),
				"cannot set header %q to %q", h, val)
		}
		for i, h := range hs.rm {
			v.check(fmt.Sprintf("%s.%s_remove[%d]", at, hs.key, i), headerNameRE.MatchString(h) && !strings.EqualFold(h, "host"), "%q cannot be removed", h)
		}
	}
	v.check(at+".timeout", r.Timeout >= 0, "must not be negative")
	if rt := r.Retries; rt.Set() {
		v.check(at+".retries.attempts", rt.Attempts >= 0 && rt.Attempts <= 10, "must be between 0 and 10, got %d", rt.Attempts)
		v.check(at+".retries.per_try_timeout", rt.PerTryTimeout >= 0, "must not be negative")
		for i, on := range rt.RetryOn {
			v.check(fmt.Sprintf("%s.retries.retry_on[%d]", at, i), slices.Contains(gatewayRetryOn, on), "%q is not one of %s", on, strings.Join(gatewayRetryOn, ", "))
		}
	}
	if cors := r.CORS; cors.Set() || len(cors.AllowMethods)+len(cors.AllowHeaders)+len(cors.ExposeHeaders) > 0 || cors.MaxAge != 0 || cors.AllowCredentials {
		v.check(at+".cors.allow_origins", cors.Set(), "is required for a CORS policy (e.g. [https://shop.example.com])")
		for i, o := range cors.AllowOrigins {
			u, err := url.Parse(o)
			v.check(fmt.Sprintf("%s.cors.allow_origins[%d]", at, i), o == "*" || (err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && (u.Path == "" || u.Path == "/")),
				"%q is not an origin (scheme://host[:port]) or *", o)
		}
		v.check(at+".cors.allow_credentials", !cors.AllowCredentials || !slices.Contains(cors.AllowOrigins, "*"), "cannot be used with allow_origins *: browsers refuse it")
		for i, m := range cors.AllowMethods {
			v.check(fmt.Sprintf("%s.cors.allow_methods[%d]", at, i), methodRE.MatchString(m), "%q is not an HTTP method (upper case)", m)
		}
		for _, hs := range []struct {
			key string
			hs  []string
		}{{"allow_headers", cors.AllowHeaders}, {"expose_headers", cors.ExposeHeaders}} {
			for i, h := range hs.hs {
				v.check(fmt.Sprintf("%s.cors.%s[%d]", at, hs.key, i), headerNameRE.MatchString(h), "%q is not a valid HTTP header name", h)
			}
		}
		v.check(at+".cors.max_age", cors.MaxAge >= 0, "must not be negative")
	}
	a := r.Auth
	v.check(at+".auth.require", a.Require == "" || slices.Contains([]string{AuthRequired, AuthOptional, AuthNone}, a.Require),
		"%q is not one of required, optional, none", a.Require)
	v.check(at+".auth.jwt", a.JWT == "" || providers[a.JWT], "%q is not a provider in control.gateway.jwt_providers", a.JWT)
	v.check(at+".auth.api_key", !a.APIKey || haveKeys, "no control.gateway.api_keys are configured")
	req := a.Requirement()
	v.check(at+".auth.require", req == AuthNone || a.JWT != "" || a.APIKey, "%s needs jwt (a provider) or api_key", req)
	v.check(at+".auth.require", req != AuthNone || (a.JWT == "" && !a.APIKey && len(a.Claims)+len(a.ClaimRules) == 0), "none cannot name jwt, api_key or claims")
	v.check(at+".auth.claims", len(a.Claims)+len(a.ClaimRules) == 0 || a.JWT != "", "claim rules need a jwt provider")
	for i, r := range a.ClaimRules {
		rp := fmt.Sprintf("%s.auth.claim_rules[%d]", at, i)
		v.check(rp, r.Claim != "" && r.Contains != "", "claim and contains must not be empty")
		_, dup := a.Claims[r.Claim]
		v.check(rp+".claim", !dup, "%q is also in claims", r.Claim)
	}
	for c, want := range a.Claims {
		v.check(fmt.Sprintf("%s.auth.claims.%s", at, c), c != "" && want != "", "claim and value must not be empty")
	}
}

func (v *validator) regex(path, s string) {
	if s == "" {
		return
	}
	if _, err := regexp.Compile(s); err != nil {
		v.add(path, "%q is not an RE2 regular expression: %v", s, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
}

// checkFiles reports the providers' jwks_file that mesh control cannot
// read (it reads them at start and on every reload).
func (g *ControlGateway) checkFiles() []FieldError {
	var errs []FieldError
	for i, p := range g.JWTProviders {
		if p.JWKSFile == "" {
			continue
		}
		f, err := os.Open(p.JWKSFile)
		if err == nil {
			f.Close()
			continue
		}
		msg := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		errs = append(errs, FieldError{Path: fmt.Sprintf("control.gateway.jwt_providers[%d].jwks_file", i), Msg: fmt.Sprintf("cannot read %q: %s", p.JWKSFile, msg)})
	}
	return errs
}
