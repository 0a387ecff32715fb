package chain

import (
	"context"
	"net/http"
	"testing"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/identity"
)

// BenchmarkAuthorization runs the inbound authorization step on the allow
// path (a caller with a verified identity passing a deny rule, then
// matching the third allow rule by caller, method and path) with a final
// step that does not send: no allocation per request.
func BenchmarkAuthorization(b *testing.B) {
	web := identity.ID{TrustDomain: "mesh.local", Namespace: "default", Service: "web"}
	id := func(s string) []rbac.Principal {
		return []rbac.Principal{{Authenticated: true, ID: identity.ID{TrustDomain: "mesh.local", Namespace: "default", Service: s}.String()}}
	}
	get := "GET"
	pol := &rbac.Policy{
		Deny: []rbac.Rule{{Name: "no-batch", Principals: id("batch"), Permissions: []rbac.Permission{{Any: true}}}},
		Allow: []rbac.Rule{
			{Name: "a", Principals: id("billing"), Permissions: []rbac.Permission{{Any: true}}},
			{Name: "b", Principals: []rbac.Principal{{Any: true}}, Permissions: []rbac.Permission{{Path: &rbac.StringMatch{Prefix: "/health"}}}},
			{Name: "web", Principals: id("web"), Permissions: []rbac.Permission{{And: []rbac.Permission{
				{Header: &rbac.HeaderMatch{Name: ":method", Match: rbac.StringMatch{Exact: &get}}},
				{Path: &rbac.StringMatch{Prefix: "/api/"}},
				{Header: &rbac.HeaderMatch{Name: "X-Env", Present: true}},
			}}}},
		},
		DefaultDeny: true,
	}
	steps := DefaultSteps()
	steps.Inbound = []InboundBuilder{steps.Inbound[0], {Name: "ok", Build: func(*InboundTarget) (Step, error) { return okInbound{}, nil }}}
	h, err := CompileSteps(&table.Table{Version: "bench", Static: true, Inbound: table.Inbound{Authorization: pol}}, nil,
		Local{Service: "orders"}, proxy.NewForwarder(proxy.Options{}), NewState(nil), zerolog.Nop(), steps)
	if err != nil {
		b.Fatal(err)
	}
	if h.inbound.names[0] != "authorization" {
		b.Fatalf("inbound steps %v", h.inbound.names)
	}
	w := nopWriter{h: http.Header{}}
	r, _ := http.NewRequest(http.MethodGet, "http://orders/api/x", nil)
	r.Header.Set("X-Env", "prod")
	r = r.WithContext(identity.NewContext(context.Background(), web))
	b.ReportAllocs()
	for b.Loop() {
		h.serveInbound(w, r, "127.0.0.1:1")
	}
}

type okInbound struct{}

func (okInbound) Name() string { return "ok" }
func (okInbound) Serve(x *Exchange, _ Next) error {
	x.W.WriteHeader(http.StatusOK)
	return nil
}
