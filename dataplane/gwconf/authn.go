package gwconf

import "github.com/meshvm/mesh/authn"

// Sources are where the provider's tokens are, for authn.TokenFrom (the
// Authorization header's Bearer token when none is configured).
func (p *Provider) Sources() []authn.Source {
	if len(p.Headers)+len(p.Cookies) == 0 {
		return authn.DefaultSources
	}
	out := make([]authn.Source, 0, len(p.Headers)+len(p.Cookies))
	for _, h := range p.Headers {
		out = append(out, authn.Source{Header: h.Name, Prefix: h.Prefix})
	}
	for _, c := range p.Cookies {
		out = append(out, authn.Source{Cookie: c})
	}
	return out
}

// Rules are the route's claim rules, for authn.Claims.Allow.
func (a *Auth) Rules() []authn.Rule {
	out := make([]authn.Rule, 0, len(a.Claims))
	for _, c := range a.Claims {
		out = append(out, authn.Rule{Claim: c.Claim, Contains: c.Contains})
	}
	return out
}

// Keys are the API keys, for authn.NewAPIKeys.
func (c *Config) Keys() []authn.APIKey {
	out := make([]authn.APIKey, 0, len(c.APIKeys))
	for _, k := range c.APIKeys {
		out = append(out, authn.APIKey{Subject: k.Subject, Hash: k.Hash})
	}
	return out
}
