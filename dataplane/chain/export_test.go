package chain

import "github.com/meshvm/mesh/routematch"

// SetRoute puts rt on x as the route step does, for tests that compile
// routes themselves.
func SetRoute(x *Exchange, rt *routematch.Route) { x.route = rt }
