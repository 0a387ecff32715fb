package gateway

import (
	"net/http"
	"strings"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/dataplane/chain"
)

// Reasons of the authn step's refusals (x-mesh-reason, access log).
const (
	ReasonAuthMissing   = "auth-missing"   // 401: no credentials, required
	ReasonAuthInvalid   = "auth-invalid"   // 401: bad token or API key
	ReasonAuthForbidden = "auth-forbidden" // 403: valid, claims not allowed
)

// authenticate checks the credentials the route asks for, once, at the
// edge: a JWT from one of its providers and/or an API key, then its claim
// rules. Missing or bad credentials are 401 with WWW-Authenticate; valid
// ones that a rule does not allow are 403. Verified claims go upstream as
// the configured headers (their incoming copies were stripped); an API
// key does not go upstream. The token itself is never logged.
type authenticate struct {
	auth  *auth
	count func(result string)
}

func buildAuthn(g *Gateway, s *served) chain.Step {
	if s.auth == nil || len(s.auth.routes) == 0 {
		return nil
	}
	return &authenticate{auth: s.auth, count: func(res string) { g.metrics.auth.WithLabelValues(res).Inc() }}
}

func (*authenticate) Name() string { return "authn" }

func (s *authenticate) Serve(x *chain.Exchange, next chain.Next) error {
	e := edgeOf(x)
	ra := s.auth.routes[e.route]
	if ra == nil || (ra.jwt == RequireNone && ra.apiKey == RequireNone) {
		return next.Serve(x)
	}
	r := x.R
	var claims *authn.Claims
	var prov *jwtProvider
	if ra.jwt != RequireNone {
		c, p, found, err := ra.verifyJWT(r)
		switch {
		case found && err != nil:
			return s.refuse(x, e, ra, http.StatusUnauthorized, ReasonAuthInvalid, "invalid", detail(err))
		case found:
			claims, prov = c, p
		}
	}
	keyOK := false
	if ra.apiKey != RequireNone && s.auth.apiKeys != nil {
		h := http.CanonicalHeaderKey(s.auth.apiKeys.header)
		if key := r.Header.Get(h); key != "" {
			sub, err := s.auth.apiKeys.keys.Verify(key)
			if err != nil {
				return s.refuse(x, e, ra, http.StatusUnauthorized, ReasonAuthInvalid, "invalid", "api key not accepted")
			}
			keyOK = true
			e.subject = sub
		}
		delete(r.Header, h) // the key stays at the edge
	}
	jwtOK := claims != nil
	if ra.jwt == RequireRequired && !jwtOK {
		return s.refuse(x, e, ra, http.StatusUnauthorized, ReasonAuthMissing, "missing", "no token")
	}
	if ra.apiKey == RequireRequired && !keyOK && !(ra.orJWT != "" && jwtOK && prov.name == ra.orJWT) {
		return s.refuse(x, e, ra, http.StatusUnauthorized, ReasonAuthMissing, "missing", "no api key")
	}
	if len(ra.rules) > 0 {
		if claims == nil {
			return s.refuse(x, e, ra, http.StatusForbidden, ReasonAuthForbidden, "forbidden", "claim rules need a token")
		}
		if err := claims.Allow(ra.rules); err != nil {
			return s.refuse(x, e, ra, http.StatusForbidden, ReasonAuthForbidden, "forbidden", detail(err))
		}
	}
	if claims != nil {
		e.subject, e.claims = claims.Subject, claims
		for _, ch := range prov.claimHeaders {
			if v := claims.Value(ch.claim); v != "" {
				r.Header.Set(ch.header, v)
			}
		}
	}
	switch {
	case claims != nil:
		s.count("jwt")
	case keyOK:
		s.count("api-key")
	default:
		s.count("anonymous")
	}
	return next.Serve(x)
}

// refuse answers 401 (with a WWW-Authenticate challenge, RFC 6750) or 403,
// keeping why for the debug log.
func (s *authenticate) refuse(x *chain.Exchange, e *edgeRequest, ra *routeAuth, status int, reason, result, why string) error {
	e.authDetail = why
	s.count(result)
	c := `Bearer realm="` + ra.realm + `"`
	switch {
	case status == http.StatusForbidden:
		c += `, error="insufficient_scope"`
	case reason == ReasonAuthInvalid:
		c += `, error="invalid_token", error_description="` + strings.ReplaceAll(why, `"`, `'`) + `"`
	}
	x.W.Header().Set("WWW-Authenticate", c)
	return chain.Refuse(status, reason, nil)
}

// detail is an error's reason without the token (authn's errors never
// carry it), short enough for a header.
func detail(err error) string {
	s := err.Error()
	for _, p := range []string{authn.ErrInvalidToken.Error() + ": ", authn.ErrForbidden.Error() + ": "} {
		s = strings.TrimPrefix(s, p)
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}
