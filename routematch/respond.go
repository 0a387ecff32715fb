package routematch

import "net/http"

// CatchAll reports whether the route matches every request: a "/" (or
// empty) prefix and no header, query parameter or gRPC condition.
func (rt *Route) CatchAll() bool {
	return (!rt.hasPath || (rt.path.kind == pathPrefix && rt.path.value == "/")) &&
		len(rt.headers)+len(rt.query) == 0 && !rt.grpc
}

// Plain reports whether the route forwards to its one cluster unchanged:
// no weighted split, path or host rewrite, header mutation, per-filter
// configuration (fault injection...), mirror or hash policy.
func (rt *Route) Plain() bool {
	return rt.Kind == Forward && len(rt.Clusters) == 0 && rt.PrefixRewrite == "" &&
		rt.RegexRewrite == nil && rt.HostRewrite == "" && rt.mut.empty() && len(rt.PerFilterConfig) == 0 &&
		rt.Fault == nil && len(rt.Mirrors) == 0 && len(rt.HashPolicies) == 0
}

// Respond answers a request matched by a redirect or direct-response
// route (Location and the redirect's code; the direct response's status,
// response header mutations and body, text/plain unless a mutation set
// the Content-Type). It does nothing for a forwarding route.
func (rt *Route) Respond(w http.ResponseWriter, r *http.Request) {
	switch rt.Kind {
	case RedirectKind:
		w.Header().Set("Location", rt.RedirectLocation(r))
		w.WriteHeader(rt.Redirect.Code)
	case DirectKind:
		rt.ApplyResponseHeaders(w.Header(), "")
		if len(rt.Direct.Body) > 0 && w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		w.WriteHeader(rt.Direct.Status)
		_, _ = w.Write(rt.Direct.Body)
	}
}

// ResponseWriter returns w wrapped so that the route's response header
// mutations (and those of cluster, the picked weighted cluster) apply to
// the head the upstream answers with, just before it is written, as
// Envoy's router does; w itself when there are none (no allocation).
func (rt *Route) ResponseWriter(w http.ResponseWriter, cluster string) http.ResponseWriter {
	if !rt.MutatesResponse(cluster) {
		return w
	}
	return &responseMutator{ResponseWriter: w, rt: rt, cluster: cluster}
}

// responseMutator applies a route's response header mutations to the
// head the service answered with, just before it is written.
type responseMutator struct {
	http.ResponseWriter
	rt      *Route
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
