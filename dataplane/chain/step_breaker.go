package chain

import (
	"net/http"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/governance/breaker"
)

// circuitBreaker is the upstream service's breaker (hystrix semantics, see
// governance/breaker): while open, requests get 503 circuit-open at once,
// with a Retry-After of the time left in the sleep window; after the rest
// of the path ran, the request's outcome is reported to its window.
type circuitBreaker struct{ svc *service }

// breakerConfig maps a policy's circuit_breaker onto the breaker.
func breakerConfig(p config.Policy) breaker.Config {
	cb := p.CircuitBreaker
	return breaker.Config{
		ErrorPercentThreshold:  cb.ErrorPercentThreshold,
		RequestVolumeThreshold: cb.RequestVolumeThreshold,
		SleepWindow:            cb.SleepWindow,
	}
}

func buildBreaker(t *UpstreamTarget) (Step, error) { return &circuitBreaker{svc: t.u.svc}, nil }

func (*circuitBreaker) Name() string { return "circuit-breaker" }

func (s *circuitBreaker) Serve(x *Exchange, next Next) error {
	svc := s.svc
	permit, wait := svc.breaker.Allow()
	if !permit.OK() || permit.Probe() {
		svc.observeBreaker() // open, or half-open for this probe
	}
	if !permit.OK() {
		return Refuse(http.StatusServiceUnavailable, proxy.ReasonCircuitOpen, svc.m.BreakerRejected).WithRetryAfter(wait)
	}
	err := next.Serve(x)
	switch x.outcome {
	case succeeded:
		svc.breaker.Report(permit, true)
	case failed:
		svc.breaker.Report(permit, false)
	default:
		svc.breaker.Abandon(permit)
	}
	svc.observeBreaker()
	return err
}
