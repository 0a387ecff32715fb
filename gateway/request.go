package gateway

import (
	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/routematch"
)

// edgeRequest is what the edge steps of one request share (the
// chain.Exchange's Edge).
type edgeRequest struct {
	clientIP string
	route    *routematch.Route
	// routeLabel names the route for metrics ("none" when unrouted).
	routeLabel string
	subject    string
	claims     *authn.Claims
	// authDetail says why credentials were refused (for the access log
	// and debug log; never the token).
	authDetail string
}

func edgeOf(x *chain.Exchange) *edgeRequest { return x.Edge.(*edgeRequest) }
