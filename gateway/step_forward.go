package gateway

import (
	"math/rand/v2"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/routematch"
)

// forward ends the edge path: a redirect or direct-response route is
// answered here; a forwarding route picks its cluster (weighted split),
// applies its rewrites and header mutations and hands the request to that
// service's outbound path under the route's timeout and, when the route
// has one, its retry policy (else the service's applies).
type forward struct {
	retries map[*routematch.Route]*chain.Retries
}

func buildForward(_ *Gateway, s *served) chain.Step { return forward{retries: s.retries} }

func (forward) Name() string { return "forward" }

func (f forward) Serve(x *chain.Exchange, _ chain.Next) error {
	rt := edgeOf(x).route
	w, r := x.W, x.R
	if rt.Kind != routematch.Forward {
		rt.Respond(w, r)
		return nil
	}
	cluster := rt.Pick(rand.Uint64())
	rt.Rewrite(r)
	rt.ApplyRequestHeaders(r.Header, cluster)
	// The service's response headers arrive later: mutated as the head
	// goes out.
	x.W = rt.ResponseWriter(w, cluster)
	var o chain.ForwardOptions
	if rt.TimeoutSet && rt.Timeout > 0 {
		o.Timeout = rt.Timeout
	}
	o.Retries = f.retries[rt]
	return x.Forward(cluster, o)
}
