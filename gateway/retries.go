package gateway

import (
	"fmt"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/routematch"
)

// routeRetries reads the retry policy of every route that has one (its
// own or its virtual host's): the forward step hands it to the service's
// outbound path, in place of the service's cluster policy. An unknown
// retry_on condition refuses the config.
func routeRetries(t *routematch.Table) (map[*routematch.Route]*chain.Retries, error) {
	out := map[*routematch.Route]*chain.Retries{}
	if t == nil {
		return out, nil
	}
	for _, vh := range t.VirtualHosts() {
		for _, rt := range vh.Routes {
			r, err := chain.RouteRetries(rt.Retry)
			if err != nil {
				return nil, fmt.Errorf("route %q: %w", rt.Name, err)
			}
			if r != nil {
				out[rt] = r
			}
		}
	}
	return out, nil
}
