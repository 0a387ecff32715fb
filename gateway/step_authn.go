package gateway

import (
	"errors"
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

// authenticate checks the credentials the route's requirement names,
// once, at the edge: a JWT from one of its providers (or an API key),
// then its claim rules. Missing or bad credentials are 401 with
// WWW-Authenticate; valid ones that a rule does not allow are 403.
// Verified claims go upstream as the configured headers (their incoming
// copies were stripped). The token itself is never logged.
type authenticate struct {
	auth  *auth
	count func(result string)
}

func buildAuthn(g *Gateway, s *served) chain.Step {
	if s.auth == nil || len(s.auth.requirements) == 0 {
		return nil
	}
	return &authenticate{auth: s.auth, count: func(res string) { g.metrics.auth.WithLabelValues(res).Inc() }}
}

func (*authenticate) Name() string { return "authn" }

func (s *authenticate) Serve(x *chain.Exchange, next chain.Next) error {
	e := edgeOf(x)
	rq := s.requirementOf(e)
	if rq == nil || rq.require == RequireNone {
		return next.Serve(x)
	}
	r := x.R
	c, p, found, err := rq.verifyJWT(r)
	if !found && rq.apiKeys != nil {
		if key := r.Header.Get(rq.apiKeys.header); key != "" {
			found = true
			sub, kerr := rq.apiKeys.keys.Verify(key)
			if kerr == nil {
				e.subject = sub
				if rq.apiKeys.subjectHeader != "" {
					r.Header.Set(rq.apiKeys.subjectHeader, sub)
				}
				delete(r.Header, http.CanonicalHeaderKey(rq.apiKeys.header)) // the key stays at the edge
				s.count("api-key")
				return next.Serve(x)
			}
			err = kerr
		}
	}
	switch {
	case !found && rq.require == RequireOptional:
		s.count("anonymous")
		return next.Serve(x)
	case !found:
		e.authDetail = "no credentials"
		s.count("missing")
		x.W.Header().Set("WWW-Authenticate", rq.challenge(""))
		return chain.Refuse(http.StatusUnauthorized, ReasonAuthMissing, nil)
	case err != nil:
		e.authDetail = detail(err)
		s.count("invalid")
		x.W.Header().Set("WWW-Authenticate", rq.challenge(e.authDetail))
		return chain.Refuse(http.StatusUnauthorized, ReasonAuthInvalid, nil)
	}
	if err := c.Allow(rq.rules); err != nil {
		e.authDetail = detail(err)
		s.count("forbidden")
		x.W.Header().Set("WWW-Authenticate", `Bearer realm="`+rq.realm+`", error="insufficient_scope"`)
		return chain.Refuse(http.StatusForbidden, ReasonAuthForbidden, nil)
	}
	e.subject, e.claims = c.Subject, c
	for _, ch := range p.claimHeaders {
		if v := c.Value(ch.claim); v != "" {
			r.Header.Set(ch.header, v)
		}
	}
	s.count("ok")
	return next.Serve(x)
}

func (s *authenticate) requirementOf(e *edgeRequest) *requirement {
	j := e.route.JWT
	if j.Set && j.Disabled {
		return nil
	}
	if j.RequirementName != "" {
		return s.auth.requirements[j.RequirementName]
	}
	return nil
}

// challenge is the WWW-Authenticate of a 401 (RFC 6750).
func (rq *requirement) challenge(why string) string {
	c := `Bearer realm="` + rq.realm + `"`
	if why != "" {
		c += `, error="invalid_token", error_description="` + strings.ReplaceAll(why, `"`, `'`) + `"`
	}
	return c
}

// detail is an error's reason without the token (authn's errors never
// carry it), short enough for a header.
func detail(err error) string {
	s := err.Error()
	for _, p := range []string{authn.ErrInvalidToken.Error() + ": ", authn.ErrForbidden.Error() + ": "} {
		s = strings.TrimPrefix(s, p)
	}
	if errors.Is(err, authn.ErrForbidden) && s == authn.ErrForbidden.Error() {
		return "claims not allowed"
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}
