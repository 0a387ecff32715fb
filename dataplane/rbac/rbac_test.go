package rbac_test

import (
	"net/http"
	"testing"

	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/identity"
)

func TestPrincipals(t *testing.T) {
	web := identity.ID{TrustDomain: "mesh.local", Namespace: "default", Service: "web"}
	for _, tc := range []struct {
		name  string
		p     rbac.Principal
		peer  identity.ID
		authn bool
		want  bool
	}{
		{"any matches a plaintext caller", rbac.Principal{Any: true}, identity.ID{}, false, true},
		{"authenticated needs an identity", rbac.Principal{Authenticated: true}, identity.ID{}, false, false},
		{"authenticated, any identity", rbac.Principal{Authenticated: true}, web, true, true},
		{"exact id", rbac.Principal{Authenticated: true, ID: "spiffe://mesh.local/ns/default/svc/web"}, web, true, true},
		{"exact id is not a prefix", rbac.Principal{Authenticated: true, ID: "spiffe://mesh.local/ns/default/svc/we"}, web, true, false},
		{"exact id is not longer", rbac.Principal{Authenticated: true, ID: "spiffe://mesh.local/ns/default/svc/web2"}, web, true, false},
		{"other namespace", rbac.Principal{Authenticated: true, ID: "spiffe://mesh.local/ns/shop/svc/web"}, web, true, false},
		{"prefix of a namespace", rbac.Principal{Authenticated: true, IDPrefix: "spiffe://mesh.local/ns/default/"}, web, true, true},
		{"prefix within a piece", rbac.Principal{Authenticated: true, IDPrefix: "spiffe://mesh.lo"}, web, true, true},
		{"prefix that differs", rbac.Principal{Authenticated: true, IDPrefix: "spiffe://mesh.local/ns/shop/"}, web, true, false},
		{"prefix longer than the id", rbac.Principal{Authenticated: true, IDPrefix: "spiffe://mesh.local/ns/default/svc/web/x"}, web, true, false},
		{"not", rbac.Principal{Not: &rbac.Principal{Authenticated: true}}, identity.ID{}, false, true},
		{"and", rbac.Principal{And: []rbac.Principal{{Authenticated: true}, {Any: true}}}, web, true, true},
		{"or of none", rbac.Principal{Or: []rbac.Principal{}}, web, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := &rbac.Policy{Allow: []rbac.Rule{{Name: "r", Principals: []rbac.Principal{tc.p}, Permissions: []rbac.Permission{{Any: true}}}}, DefaultDeny: true}
			d := pol.Evaluate(&rbac.Request{Peer: tc.peer, Authenticated: tc.authn, Header: http.Header{}})
			if d.Allowed != tc.want {
				t.Errorf("allowed %v, want %v", d.Allowed, tc.want)
			}
		})
	}
}

func TestPermissions(t *testing.T) {
	get := "GET"
	v := "a,b"
	for _, tc := range []struct {
		name string
		p    rbac.Permission
		req  rbac.Request
		want bool
	}{
		{"method", rbac.Permission{Header: &rbac.HeaderMatch{Name: ":method", Match: rbac.StringMatch{Exact: &get}}}, rbac.Request{Method: "GET"}, true},
		{"method differs", rbac.Permission{Header: &rbac.HeaderMatch{Name: ":method", Match: rbac.StringMatch{Exact: &get}}}, rbac.Request{Method: "POST"}, false},
		{"path prefix", rbac.Permission{Path: &rbac.StringMatch{Prefix: "/api/"}}, rbac.Request{Path: "/api/x"}, true},
		{"path ignore case", rbac.Permission{Path: &rbac.StringMatch{Prefix: "/API/", IgnoreCase: true}}, rbac.Request{Path: "/api/x"}, true},
		{"missing header", rbac.Permission{Header: &rbac.HeaderMatch{Name: "X-A", Present: true}}, rbac.Request{}, false},
		{"inverted missing header", rbac.Permission{Header: &rbac.HeaderMatch{Name: "X-A", Present: true, Invert: true}}, rbac.Request{}, true},
		{"values joined", rbac.Permission{Header: &rbac.HeaderMatch{Name: "X-A", Match: rbac.StringMatch{Exact: &v}}}, rbac.Request{Header: http.Header{"X-A": {"a", "b"}}}, true},
		{"http conditions never match a connection", rbac.Permission{Path: &rbac.StringMatch{Prefix: "/"}}, rbac.Request{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.req.Header == nil && tc.name != "http conditions never match a connection" {
				tc.req.Header = http.Header{}
			}
			pol := &rbac.Policy{Allow: []rbac.Rule{{Name: "r", Principals: []rbac.Principal{{Any: true}}, Permissions: []rbac.Permission{tc.p}}}, DefaultDeny: true}
			if d := pol.Evaluate(&tc.req); d.Allowed != tc.want {
				t.Errorf("allowed %v, want %v", d.Allowed, tc.want)
			}
		})
	}
}

// TestOrder: deny before allow, then the default; the zero policy serves.
func TestOrder(t *testing.T) {
	all := []rbac.Principal{{Any: true}}
	anyPerm := []rbac.Permission{{Any: true}}
	var none *rbac.Policy
	if d := none.Evaluate(&rbac.Request{}); !d.Allowed || d.Rule != rbac.DefaultRule {
		t.Errorf("nil policy: %+v", d)
	}
	p := &rbac.Policy{Deny: []rbac.Rule{{Name: "d", Principals: all, Permissions: anyPerm}}, Allow: []rbac.Rule{{Name: "a", Principals: all, Permissions: anyPerm}}}
	if d := p.Evaluate(&rbac.Request{}); d.Allowed || d.Rule != "d" || d.Action != "deny" {
		t.Errorf("deny and allow both match: %+v, want denied by d", d)
	}
	if !p.L4() {
		t.Error("a policy of any permissions is L4")
	}
	p.Deny[0].Permissions = []rbac.Permission{{Path: &rbac.StringMatch{Prefix: "/"}}}
	if p.L4() {
		t.Error("a path permission is not L4")
	}
}
