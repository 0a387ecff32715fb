package agent

import (
	"net"

	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
)

// authorizeConn is the L4 authorization of a tcp app's inbound
// connections: the current table's policy on the caller's verified
// identity (the mTLS listener's; none for plaintext). A policy with
// HTTP conditions cannot be judged on a connection: such a connection is
// refused (fail closed; mesh control writes only L4 rules for tcp apps).
func (a *Agent) authorizeConn(c net.Conn) tcpproxy.Authorization {
	pol := a.handlers.Current().Table().Inbound.Authorization
	if pol.Empty() {
		return tcpproxy.Authorization{Allowed: true}
	}
	req := rbac.Request{}
	req.Peer, req.Authenticated = connPeer(c)
	out := tcpproxy.Authorization{}
	if req.Authenticated {
		out.PeerIdentity = req.Peer.String()
	}
	svc := a.config().Agent.Service
	if !pol.L4() {
		out.Rule = "http-rules-on-tcp"
		observability.AuthzCount(a.obs.Metrics().AuthzDecision(svc, "deny", out.Rule))
		return out
	}
	d := pol.Evaluate(&req)
	out.Allowed, out.Rule = d.Allowed, d.Rule
	observability.AuthzCount(a.obs.Metrics().AuthzDecision(svc, d.Action, d.Rule))
	return out
}

// connPeer is the verified identity of an inbound connection: the mTLS
// listener's (dataplane/mtls), none for plaintext.
func connPeer(c net.Conn) (identity.ID, bool) { return mtls.PeerOf(c) }
