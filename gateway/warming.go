package gateway

import (
	"sort"
	"time"

	"github.com/meshvm/mesh/routematch"
)

// warmingTimeout bounds how long a config whose routes name a cluster
// without a load assignment yet is held back (Envoy's
// initial_fetch_timeout default is 15s; a route change should not wait
// that long for a service that has no endpoints at all).
const warmingTimeout = 5 * time.Second

// cold lists the clusters s newly routes to (old did not) that have no
// endpoints in s yet: a route change is pushed as routes and, just after,
// the new service's endpoints (mesh control sends a service's endpoints to
// a proxy once something routes to it); swapping in the routes first
// would send requests to a service with no endpoints. Like Envoy's
// cluster warming, the new config waits for them (bounded by
// warmingTimeout).
func cold(s, old *served) []string {
	was := routed(old)
	var out []string
	for name := range routed(s) {
		if was[name] {
			continue
		}
		svc := s.table.Services[name]
		if svc != nil && len(svc.Endpoints) == 0 {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// routed is the set of clusters s's routes forward to.
func routed(s *served) map[string]bool {
	need := map[string]bool{}
	if s == nil || s.routes == nil {
		return need
	}
	for _, vh := range s.routes.VirtualHosts() {
		for _, rt := range vh.Routes {
			if rt.Kind != routematch.Forward {
				continue
			}
			if rt.Cluster != "" {
				need[rt.Cluster] = true
			}
			for _, wc := range rt.Clusters {
				need[wc.Name] = true
			}
		}
	}
	return need
}
