package chain

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/governance/breaker"
)

// inboundLimit bounds the requests in flight to the app
// (inbound.max_requests): above it, 503 overflow. The counter is State's,
// so it carries over a table swap.
type inboundLimit struct {
	lim   *breaker.Limit
	count func()
}

func buildInboundLimit(t *InboundTarget) (Step, error) {
	return &inboundLimit{lim: t.h.st.inLimit, count: t.h.inLimits.ConcurrencyLimited}, nil
}

func (*inboundLimit) Name() string { return "concurrency-limit" }

func (s *inboundLimit) Serve(x *Exchange, next Next) error {
	if !s.lim.Acquire() {
		return Refuse(http.StatusServiceUnavailable, proxy.ReasonOverflow, s.count)
	}
	defer s.lim.Release()
	return next.Serve(x)
}
