package gateway

import (
	"context"
	"fmt"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// served is one whole config the gateway serves: the services' table
// (clusters, endpoints, policies) compiled into the chain's handlers, the
// route table, the authentication config, and the edge path built from
// them. It is immutable; a new control-plane push builds a new one, which
// replaces it atomically (requests see one or the other).
type served struct {
	version  string
	table    *table.Table
	handlers *chain.Handlers
	routes   *routematch.Table
	auth     *auth
	cors     map[*routematch.Route]*corsPolicy
	retries  map[*routematch.Route]*chain.Retries // routes with a retry_policy
	edge     *chain.EdgePath
	// plainHTTP: the HTTP listener runs the edge path too.
	plainHTTP bool
	// stop ends the background work of this version (JWKS refresh).
	stop context.CancelFunc
}

// parseResources turns a complete xDS resource set into what the edge
// serves (everything checked; no I/O but reading local JWKS files).
func (g *Gateway) parseResources(res xdsclient.Resources) (*served, error) {
	t, err := xdsconf.Translate(res)
	if err != nil {
		return nil, err
	}
	s := &served{version: t.Version, table: t}
	if rc := res.Routes[wire.GatewayRoute]; rc != nil {
		if s.routes, err = routematch.Compile(rc); err != nil {
			return nil, fmt.Errorf("route %s: %w", wire.GatewayRoute, err)
		}
	}
	if s.retries, err = routeRetries(s.routes); err != nil {
		return nil, fmt.Errorf("route %s: %w", wire.GatewayRoute, err)
	}
	if s.cors, err = corsPolicies(s.routes); err != nil {
		return nil, fmt.Errorf("route %s: cors: %w", wire.GatewayRoute, err)
	}
	if l := res.Listeners[wire.GatewayHTTPSListener]; l != nil {
		if s.auth, err = g.parseAuth(l, s.routes); err != nil {
			return nil, fmt.Errorf("listener %s: %w", wire.GatewayHTTPSListener, err)
		}
	}
	// The HTTP listener serves the routes (their :scheme http twins
	// redirect) when the control plane sent it; else it redirects all.
	s.plainHTTP = res.Listeners[wire.GatewayHTTPListener] != nil
	return s, nil
}

// compile builds s's handlers and edge path; nothing is swapped yet.
func (g *Gateway) compile(s *served) error {
	h, err := chain.Compile(s.table, nil, chain.Local{Service: g.cfg.Gateway.Name}, g.forwarder, g.state, g.base)
	if err != nil {
		return fmt.Errorf("compile table %s: %w", s.version, err)
	}
	s.handlers = h
	s.edge = h.Edge(g.compileEdge(s))
	return nil
}

// install swaps s in and stops the version it replaces.
func (g *Gateway) install(s *served) {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if s.auth != nil {
		s.auth.run(ctx)
	}
	if old := g.served.Swap(s); old != nil && old.stop != nil {
		old.stop()
	}
}

// emptyServed is what the gateway serves before any config: no routes
// (404 no-route).
func (g *Gateway) emptyServed() *served {
	s := &served{version: "none", table: &table.Table{Version: "none", Static: true, Services: map[string]*table.Service{}}}
	if err := g.compile(s); err != nil {
		panic(fmt.Sprintf("gateway: empty config does not compile: %v", err)) // a bug, not input
	}
	return s
}
