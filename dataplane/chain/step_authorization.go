package chain

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// authorization is the callee's RBAC policy (the table's
// Inbound.Authorization, from the RBAC filters mesh control pushes): deny
// rules, then allow rules, then the default, on the caller's verified
// identity (identity.FromContext; none for a plaintext caller), the
// method, the path and the headers. A refusal is 403 rbac-denied (gRPC
// PERMISSION_DENIED). The access log gets the caller and the deciding
// rule; mesh_rbac_decisions_total counts each decision.
type authorization struct {
	pol *rbac.Policy
	// Counters per rule, resolved at build time (nil: not instrumented).
	deny, allow           map[string]prometheus.Counter
	defAllowed, defDenied prometheus.Counter
}

func buildAuthorization(t *InboundTarget) (Step, error) {
	p := t.Inbound.Authorization
	if p.Empty() {
		return nil, nil
	}
	s := &authorization{pol: p, deny: map[string]prometheus.Counter{}, allow: map[string]prometheus.Counter{}}
	m := t.h.st.metrics
	svc := t.Local.Service
	for _, r := range p.Deny {
		s.deny[r.Name] = m.AuthzDecision(svc, "deny", r.Name)
	}
	for _, r := range p.Allow {
		s.allow[r.Name] = m.AuthzDecision(svc, "allow", r.Name)
	}
	s.defAllowed = m.AuthzDecision(svc, "allow", rbac.DefaultRule)
	s.defDenied = m.AuthzDecision(svc, "deny", rbac.DefaultRule)
	return s, nil
}

func (*authorization) Name() string { return "authorization" }

func (s *authorization) Serve(x *Exchange, next Next) error {
	r := x.R
	req := rbac.Request{Method: r.Method, Host: r.Host, Path: r.URL.Path, Header: r.Header}
	req.Peer, req.Authenticated = identity.FromContext(r.Context())
	d := s.pol.Evaluate(&req)
	x.Rec.SetAuthz(req.Peer, d.Rule)
	s.count(d)
	if !d.Allowed {
		return Refuse(http.StatusForbidden, wire.ReasonRBACDenied, nil)
	}
	return next.Serve(x)
}

func (s *authorization) count(d rbac.Decision) {
	var c prometheus.Counter
	switch {
	case d.Rule == rbac.DefaultRule && d.Allowed:
		c = s.defAllowed
	case d.Rule == rbac.DefaultRule:
		c = s.defDenied
	case d.Allowed:
		c = s.allow[d.Rule]
	default:
		c = s.deny[d.Rule]
	}
	observability.AuthzCount(c)
}
