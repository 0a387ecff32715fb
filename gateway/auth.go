package gateway

import (
	"context"
	"net/http"

	"github.com/meshvm/mesh/authn"
)

// The edge's authentication model, as served: providers by name, and the
// requirements routes name.

// Require says what a route asks of a request's credentials.
type Require uint8

const (
	// RequireNone: credentials are not checked (nor forwarded).
	RequireNone Require = iota
	// RequireOptional: no credentials is fine; bad ones are 401.
	RequireOptional
	// RequireRequired: valid credentials are needed (401 without).
	RequireRequired
)

// jwtProvider is one identity provider as the edge uses it.
type jwtProvider struct {
	name    string
	p       *authn.Provider
	sources []authn.Source
	// claimHeaders forward verified claims: claim -> request header.
	claimHeaders []claimHeader
}

type claimHeader struct{ claim, header string }

// apiKeyMethod accepts API keys from a header.
type apiKeyMethod struct {
	header string
	keys   *authn.APIKeys
	// subjectHeader carries the key's subject upstream ("" : none).
	subjectHeader string
}

// requirement is one named requirement a route refers to.
type requirement struct {
	require   Require
	providers []*jwtProvider // any of them
	apiKeys   *apiKeyMethod  // nil: no API keys
	rules     []authn.Rule
	realm     string
}

// auth is the whole authentication config of one served version.
type auth struct {
	providers    []*jwtProvider
	requirements map[string]*requirement
	// stripped are the headers the edge sets from credentials: incoming
	// copies are removed from every request so they cannot be forged.
	stripped []string
}

// run loads and refreshes every provider's keys until ctx is done.
func (a *auth) run(ctx context.Context) {
	for _, p := range a.providers {
		go p.p.Run(ctx) //nolint:errcheck // Run logs nothing and returns at ctx end
	}
}

// verifyJWT tries the requirement's providers in turn on the token each
// one's sources carry; found reports whether any token was present.
func (rq *requirement) verifyJWT(r *http.Request) (c *authn.Claims, p *jwtProvider, found bool, err error) {
	for _, p := range rq.providers {
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
