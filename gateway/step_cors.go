package gateway

import (
	"net/http"
	"strconv"
	"strings"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/routematch"
)

// CORSFilter is the standard CORS filter, whose per-route CorsPolicy a
// route carries in typed_per_filter_config.
const CORSFilter = "envoy.filters.http.cors"

// cors applies a route's CORS policy (Envoy's CorsPolicy): a preflight
// from an allowed origin is answered here (204 with the Allow-* headers,
// the upstream never sees it); other requests from an allowed origin get
// Access-Control-Allow-Origin (and -Credentials, -Expose-Headers) on
// their response. Origins not allowed get no CORS headers: the browser
// blocks them. Routes without a policy are untouched.
type cors struct {
	policies map[*routematch.Route]*corsPolicy
}

type corsPolicy struct {
	origins     []matcher
	methods     string
	headers     string
	expose      string
	maxAge      string
	credentials bool
}

type matcher struct {
	exact, prefix, suffix, contains string
	any                             bool
}

func (m matcher) match(s string) bool {
	switch {
	case m.any:
		return true
	case m.exact != "":
		return s == m.exact
	case m.prefix != "":
		return strings.HasPrefix(s, m.prefix)
	case m.suffix != "":
		return strings.HasSuffix(s, m.suffix)
	case m.contains != "":
		return strings.Contains(s, m.contains)
	}
	return false
}

func buildCORS(_ *Gateway, s *served) chain.Step {
	if len(s.cors) == 0 {
		return nil
	}
	return &cors{policies: s.cors}
}

// corsPolicies decodes the CORS policy of every route that has one.
func corsPolicies(t *routematch.Table) (map[*routematch.Route]*corsPolicy, error) {
	out := map[*routematch.Route]*corsPolicy{}
	if t == nil {
		return out, nil
	}
	for _, vh := range t.VirtualHosts() {
		for _, rt := range vh.Routes {
			a := rt.PerFilterConfig[CORSFilter]
			if a == nil {
				continue
			}
			var p corsv3.CorsPolicy
			if err := a.UnmarshalTo(&p); err != nil {
				return nil, err
			}
			cp := &corsPolicy{methods: p.GetAllowMethods(), headers: p.GetAllowHeaders(), expose: p.GetExposeHeaders(),
				maxAge: p.GetMaxAge(), credentials: p.GetAllowCredentials().GetValue()}
			for _, m := range p.GetAllowOriginStringMatch() {
				var mm matcher
				switch {
				case m.GetExact() == "*":
					mm.any = true
				case m.GetExact() != "":
					mm.exact = m.GetExact()
				case m.GetPrefix() != "":
					mm.prefix = m.GetPrefix()
				case m.GetSuffix() != "":
					mm.suffix = m.GetSuffix()
				case m.GetContains() != "":
					mm.contains = m.GetContains()
				}
				cp.origins = append(cp.origins, mm)
			}
			out[rt] = cp
		}
	}
	return out, nil
}

func (*cors) Name() string { return "cors" }

func (s *cors) Serve(x *chain.Exchange, next chain.Next) error {
	p := s.policies[edgeOf(x).route]
	origin := x.R.Header.Get("Origin")
	if p == nil || origin == "" || !p.allows(origin) {
		return next.Serve(x)
	}
	h := x.W.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	if p.credentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if x.R.Method == http.MethodOptions && x.R.Header.Get("Access-Control-Request-Method") != "" {
		if p.methods != "" {
			h.Set("Access-Control-Allow-Methods", p.methods)
		}
		if p.headers != "" {
			h.Set("Access-Control-Allow-Headers", p.headers)
		}
		if p.maxAge != "" {
			if _, err := strconv.Atoi(p.maxAge); err == nil {
				h.Set("Access-Control-Max-Age", p.maxAge)
			}
		}
		x.W.WriteHeader(http.StatusNoContent)
		return nil
	}
	if p.expose != "" {
		h.Set("Access-Control-Expose-Headers", p.expose)
	}
	return next.Serve(x)
}

func (p *corsPolicy) allows(origin string) bool {
	for _, m := range p.origins {
		if m.match(origin) {
			return true
		}
	}
	return false
}
