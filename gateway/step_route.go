package gateway

import (
	"net/http"
	"strconv"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/routematch"
)

// route matches the request against the served route configuration
// (routematch: virtual host by Host, then the first route whose path,
// method, header and query conditions hold). No match is 404 no-route.
type route struct {
	routes *routematch.Table
	labels *labelGuard
}

func buildRoute(g *Gateway, s *served) chain.Step {
	return &route{routes: s.routes, labels: g.metrics.routes}
}

func (*route) Name() string { return "route" }

func (s *route) Serve(x *chain.Exchange, next chain.Next) error {
	if s.routes == nil {
		return chain.Refuse(http.StatusNotFound, proxy.ReasonNoRoute, nil)
	}
	rt, ok := s.routes.Match(x.R)
	if !ok {
		return chain.Refuse(http.StatusNotFound, proxy.ReasonNoRoute, nil)
	}
	e := edgeOf(x)
	e.route = rt
	e.routeLabel = s.labels.value(routeName(rt))
	return next.Serve(x)
}

// routeName is a route's metric label: its name, else virtual host and
// position.
func routeName(rt *routematch.Route) string {
	if rt.Name != "" {
		return rt.Name
	}
	return rt.VirtualHost + "#" + strconv.Itoa(rt.Index)
}
