package gateway

import (
	"math/rand/v2"
	"net/http"

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
	if rt.MutatesResponse(cluster) {
		// The service's response headers arrive later: mutate them as
		// the head goes out, as Envoy's router does.
		x.W = &responseMutator{ResponseWriter: w, rt: rt, cluster: cluster}
	}
	var o chain.ForwardOptions
	if rt.TimeoutSet && rt.Timeout > 0 {
		o.Timeout = rt.Timeout
	}
	o.Retries = f.retries[rt]
	return x.Forward(cluster, o)
}

// responseMutator applies a route's response header mutations to the
// head the service answered with, just before it is written.
type responseMutator struct {
	http.ResponseWriter
	rt      *routematch.Route
	cluster string
	wrote   bool
}

func (m *responseMutator) WriteHeader(code int) {
	if !m.wrote && code >= 200 {
		m.wrote = true
		m.rt.ApplyResponseHeaders(m.ResponseWriter.Header(), m.cluster)
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *responseMutator) Write(b []byte) (int, error) {
	if !m.wrote {
		m.WriteHeader(http.StatusOK)
	}
	return m.ResponseWriter.Write(b)
}

// Flush passes flushes on, so streamed responses stay prompt.
func (m *responseMutator) Flush() {
	if !m.wrote {
		m.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(m.ResponseWriter).Flush() //nolint:errcheck // best effort, as http.Flusher
}

// Unwrap lets http.ResponseController reach the connection (upgrades,
// deadlines).
func (m *responseMutator) Unwrap() http.ResponseWriter { return m.ResponseWriter }
