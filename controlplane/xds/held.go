package xds

import (
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// heldNames is what a stream's client holds of one type, for mesh inspect
// (NodeResources): on a state-of-the-world stream, what its last request
// asked for (none named: every resource of the type); on a delta stream,
// the names sent less those removed or unsubscribed.
type heldNames struct {
	all   bool
	list  []string        // SotW: the request's names, shared with it
	names map[string]bool // delta
}

// holds says whether the client holds the resource called name.
func (h *heldNames) holds(name string) bool {
	switch {
	case h == nil:
		return false
	case h.all:
		return true
	case h.names != nil:
		return h.names[name]
	}
	for _, n := range h.list {
		if n == name {
			return true
		}
	}
	return false
}

// merge adds what o holds to h (a node's streams together).
func (h *heldNames) merge(o *heldNames) {
	if o.all {
		h.all = true
	}
	if h.names == nil {
		h.names = map[string]bool{}
	}
	for _, n := range o.list {
		h.names[n] = true
	}
	for n := range o.names {
		h.names[n] = true
	}
}

// filter keeps of res what h holds.
func (h *heldNames) filter(res map[string]types.Resource) map[string]types.Resource {
	if h != nil && h.all {
		return res
	}
	out := map[string]types.Resource{}
	for name, r := range res {
		if h.holds(name) {
			out[name] = r
		}
	}
	return out
}

// heldSotW records what a SotW request asks for.
func (s *Server) heldSotW(k streamKey, req *discovery.DiscoveryRequest) {
	if req.GetTypeUrl() == "" {
		return
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.streams[k]
	if st == nil {
		return
	}
	if st.held == nil {
		st.held = map[string]*heldNames{}
	}
	names := req.GetResourceNames()
	st.held[req.GetTypeUrl()] = &heldNames{all: len(names) == 0, list: names}
}

// heldDeltaRequest forgets the names a delta request unsubscribes.
func (s *Server) heldDeltaRequest(k streamKey, req *discovery.DeltaDiscoveryRequest) {
	if len(req.GetResourceNamesUnsubscribe()) == 0 {
		return
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	if st := s.streams[k]; st != nil {
		if h := st.held[req.GetTypeUrl()]; h != nil {
			for _, n := range req.GetResourceNamesUnsubscribe() {
				delete(h.names, n)
			}
		}
	}
}

// heldDeltaResponse records what a delta response sends and removes.
func (s *Server) heldDeltaResponse(k streamKey, typeURL string, resp *discovery.DeltaDiscoveryResponse) {
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.streams[k]
	if st == nil {
		return
	}
	if st.held == nil {
		st.held = map[string]*heldNames{}
	}
	h := st.held[typeURL]
	if h == nil {
		h = &heldNames{names: map[string]bool{}}
		st.held[typeURL] = h
	}
	for _, r := range resp.GetResources() {
		h.names[r.GetName()] = true
	}
	for _, n := range resp.GetRemovedResources() {
		delete(h.names, n)
	}
}

// heldBy is what node id's streams hold, by type URL.
func (s *Server) heldBy(id string) map[string]*heldNames {
	out := map[string]*heldNames{}
	s.smu.Lock()
	defer s.smu.Unlock()
	for _, st := range s.streams {
		if st.nodeID != id {
			continue
		}
		for typeURL, h := range st.held {
			if out[typeURL] == nil {
				out[typeURL] = &heldNames{}
			}
			out[typeURL].merge(h)
		}
	}
	return out
}
