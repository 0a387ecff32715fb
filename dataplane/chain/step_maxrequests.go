package chain

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/proxy"
)

// maxRequests bounds the requests in flight to the upstream service
// (circuit_breaker.max_requests, Envoy's threshold of that name): above
// it, 503 overflow. Its counter also sizes the retry budget.
type maxRequests struct{ svc *service }

func buildMaxRequests(t *UpstreamTarget) (Step, error) { return &maxRequests{svc: t.u.svc}, nil }

func (*maxRequests) Name() string { return "max-requests" }

func (s *maxRequests) Serve(x *Exchange, next Next) error {
	lim := &s.svc.limits.Requests
	if !lim.Acquire() {
		return Refuse(http.StatusServiceUnavailable, proxy.ReasonOverflow, s.svc.limited.ConcurrencyLimited)
	}
	defer lim.Release()
	return next.Serve(x)
}
