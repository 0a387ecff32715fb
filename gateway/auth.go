package gateway

import (
	"context"
	"net/http"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/routematch"
)

// The edge's authentication model, as served: providers, API keys, and
// each route's policy (decoded once per config from the standard
// jwt_authn per-route requirement, mesh's API key per-route config and
// the per-route RBAC claim rules).

// Require says what a route asks of one credential kind.
type Require uint8

const (
	// RequireNone: not checked (nor forwarded).
	RequireNone Require = iota
	// RequireOptional: absent is fine; present and bad is 401.
	RequireOptional
	// RequireRequired: a valid one is needed (401 without).
	RequireRequired
)

// jwtProvider is one identity provider as the edge uses it.
type jwtProvider struct {
	name string
	p    *authn.Provider
	// conf is what p was built from: a new config with the same keeps p.
	conf    authn.ProviderConfig
	sources []authn.Source
	// claimHeaders forward verified claims: claim -> request header.
	claimHeaders []claimHeader
}

type claimHeader struct{ claim, header string }

// apiKeys accepts API keys from a header.
type apiKeys struct {
	header string
	keys   *authn.APIKeys
}

// routeAuth is one route's policy.
type routeAuth struct {
	jwt       Require
	providers []*jwtProvider // any of them
	apiKey    Require
	// orJWT: a valid JWT of this provider stands in for a required key.
	orJWT string
	rules []authn.Rule
	realm string
}

// auth is the whole authentication config of one served version.
type auth struct {
	providers []*jwtProvider
	apiKeys   *apiKeys // nil: no API keys
	routes    map[*routematch.Route]*routeAuth
	// stripped are the headers the edge sets from credentials: incoming
	// copies are removed from every request so they cannot be forged.
	stripped []string
}

// run refreshes every provider's keys in the background until ctx is
// done (inline keys never change; files and URLs are re-read).
func (a *auth) run(ctx context.Context) {
	for _, p := range a.providers {
		go p.p.Run(ctx) //nolint:errcheck // returns nil at ctx end
	}
}

// verifyJWT tries the route's providers in turn on the token each one's
// sources carry; found reports whether any token was present.
func (ra *routeAuth) verifyJWT(r *http.Request) (c *authn.Claims, p *jwtProvider, found bool, err error) {
	for _, p := range ra.providers {
		tok := authn.TokenFrom(r, p.sources)
		if tok == "" {
			continue
		}
		found = true
		c, err = p.p.Verify(r.Context(), tok)
		if err == nil {
			return c, p, true, nil
		}
	}
	return nil, nil, found, err
}
