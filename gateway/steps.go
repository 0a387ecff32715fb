package gateway

import (
	"github.com/meshvm/mesh/dataplane/chain"
)

// The gateway's edge path, in order. Like the agent's steps.go, this list
// alone fixes which step runs before which; each step is one file
// (step_<name>.go). A step refuses by returning chain.Refuse(...); the
// chain's one edge renders it (status, x-mesh-reason, access log reason).
// The last step hands the request to the routed service's outbound path
// (endpoints → max-requests → circuit-breaker → route-timeout → tries).
//
//	strip-headers → ip-rate-limit → route → cors → authn →
//	subject-rate-limit → body-limit → forward
//
// A step with nothing to do under the current config is left out.

// stepBuilder builds one edge step for a served config; nil: left out.
type stepBuilder struct {
	name  string
	build func(g *Gateway, s *served) chain.Step
}

func edgeSteps() []stepBuilder {
	return []stepBuilder{
		{"strip-headers", buildStrip},
		{"ip-rate-limit", buildIPLimit},
		{"route", buildRoute},
		{"cors", buildCORS},
		{"authn", buildAuthn},
		{"subject-rate-limit", buildSubjectLimit},
		{"body-limit", buildBodyLimit},
		{"forward", buildForward},
	}
}

// compileEdge builds s's edge steps.
func (g *Gateway) compileEdge(s *served) []chain.Step {
	var out []chain.Step
	for _, b := range edgeSteps() {
		if st := b.build(g, s); st != nil {
			out = append(out, st)
		}
	}
	return out
}
