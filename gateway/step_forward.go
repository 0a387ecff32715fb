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
	switch rt.Kind {
	case routematch.RedirectKind:
		w.Header().Set("Location", rt.RedirectLocation(r))
		w.WriteHeader(rt.Redirect.Code)
		return nil
	case routematch.DirectKind:
		rt.ApplyResponseHeaders(w.Header(), "")
		if len(rt.Direct.Body) > 0 && w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		w.WriteHeader(rt.Direct.Status)
		_, _ = w.Write(rt.Direct.Body)
		return nil
	}
	cluster := rt.Pick(rand.Uint64())
	rt.Rewrite(r)
	rt.ApplyRequestHeaders(r.Header, cluster)
	rt.ApplyResponseHeaders(w.Header(), cluster)
	var o chain.ForwardOptions
	if rt.TimeoutSet && rt.Timeout > 0 {
		o.Timeout = rt.Timeout
	}
	o.Retries = f.retries[rt]
	return x.Forward(cluster, o)
}
