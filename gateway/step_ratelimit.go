package gateway

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/governance/ratelimit"
)

// keyLimit is a token bucket per key: the client IP (ip-rate-limit,
// before anything costly) or the authenticated subject
// (subject-rate-limit, after authn). A refusal is 429 rate-limited with
// Retry-After.
type keyLimit struct {
	name  string
	k     *ratelimit.Keyed
	key   func(*edgeRequest) string
	count func()
}

func buildIPLimit(g *Gateway, _ *served) chain.Step {
	if g.perIP == nil {
		return nil
	}
	return &keyLimit{name: "ip-rate-limit", k: g.perIP, key: func(e *edgeRequest) string { return e.clientIP },
		count: g.metrics.limited.WithLabelValues("ip").Inc}
}

func buildSubjectLimit(g *Gateway, _ *served) chain.Step {
	if g.perSub == nil {
		return nil
	}
	return &keyLimit{name: "subject-rate-limit", k: g.perSub, key: func(e *edgeRequest) string { return e.subject },
		count: g.metrics.limited.WithLabelValues("subject").Inc}
}

func (s *keyLimit) Name() string { return s.name }

func (s *keyLimit) Serve(x *chain.Exchange, next chain.Next) error {
	key := s.key(edgeOf(x))
	if key == "" {
		return next.Serve(x)
	}
	if ok, retry := s.k.Allow(key); !ok {
		return chain.Refuse(http.StatusTooManyRequests, proxy.ReasonRateLimited, s.count).WithRetryAfter(retry)
	}
	return next.Serve(x)
}
