package translate_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// authzModel is orders (an HTTP/1.1 app on vm-1) and cache (a tcp app on
// vm-2).
func authzModel() model.Model {
	ep := func(id, node, addr, proto string) model.Endpoint {
		return model.Endpoint{ID: id, Node: node, Address: addr, Port: 15006, AppPort: 8080, Health: model.Healthy,
			Metadata: model.Metadata{Meta: map[string]string{config.MetaAppProtocol: proto}}}
	}
	return model.Model{Services: []model.Service{
		{Name: "orders", Policy: config.DefaultPolicy(), Endpoints: []model.Endpoint{ep("o1", "vm-1", "10.0.0.1", config.AppProtocolHTTP1)}},
		{Name: "cache", Policy: config.DefaultPolicy(), Endpoints: []model.Endpoint{ep("c1", "vm-2", "10.0.0.2", config.AppProtocolTCP)}},
	}}
}

func authzConfig() config.Control {
	c := config.Default().Control
	c.CA.TrustDomain = "example.org"
	c.Authorization = []config.Authorization{
		{Service: "orders", Default: config.AuthzDeny, Rules: []config.AuthzRule{
			{Name: "no-batch", Action: config.AuthzDeny, From: []string{"batch"}},
			{Action: config.AuthzDeny, Paths: []string{"/admin/"}},
			{Action: config.AuthzAllow, From: []string{"web", "web.shop"}, Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/"}},
			{Action: config.AuthzAllow, From: []string{"*"}, Headers: []config.AuthzHeader{
				{Name: "X-Env", Regex: "prod|staging"}, {Name: "x-debug", Present: true}}},
			{Name: "health", Action: config.AuthzAllow, Paths: []string{"/health"}},
		}},
		{Service: "cache", Default: config.AuthzDeny, Rules: []config.AuthzRule{
			{Action: config.AuthzDeny, From: []string{"batch"}},
			{Action: config.AuthzAllow, From: []string{"web"}},
			// HTTP conditions cannot hold on a connection: left out.
			{Action: config.AuthzAllow, From: []string{"orders"}, Methods: []string{"GET"}},
		}},
	}
	return c
}

func translateAuthz(t *testing.T, c config.Control) *translate.Mesh {
	t.Helper()
	m := authzModel()
	tr := translate.NewTranslator()
	tr.SetAuthorization(translate.NewAuthorization(c))
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	return mesh
}

// TestGoldenAuthz writes and checks the golden resources of a callee with
// HTTP rules and one with L4 rules (wire/testdata), which the agent's
// tests read.
func TestGoldenAuthz(t *testing.T) {
	mesh := translateAuthz(t, authzConfig())
	for _, tc := range []struct {
		name string
		node model.Node
	}{
		{wiretest.AgentAuthz, model.Node{ID: "vm-1", Service: "orders"}},
		{wiretest.AgentAuthzTCP, model.Node{ID: "vm-2", Service: "cache"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := nodeResources(t, mesh, tc.node)
			if err := translate.Validate(all); err != nil {
				t.Fatalf("node view invalid: %v", err)
			}
			got := dump(t, all)
			path := wiretest.Path(tc.name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation; diff it with go test -update and git diff", path)
			}
		})
	}
}

func inboundJSON(t *testing.T, mesh *translate.Mesh, n model.Node) string {
	t.Helper()
	l, ok := nodeResources(t, mesh, n).Listeners[wire.InboundListener].(*listenerv3.Listener)
	if !ok {
		t.Fatalf("node %s has no inbound listener", n.ID)
	}
	b, err := protojson.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	// protojson varies its whitespace on purpose.
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		t.Fatal(err)
	}
	return c.String()
}

// TestAuthzTranslation checks what a user relies on, case by case.
func TestAuthzTranslation(t *testing.T) {
	orders := model.Node{ID: "vm-1", Service: "orders"}
	for _, tc := range []struct {
		name      string
		entry     config.Authorization
		want, not []string
	}{
		{name: "no entry: no filter", not: []string{wire.RBACFilter}},
		{name: "default allow without rules: no filter",
			entry: config.Authorization{Service: "orders", Default: config.AuthzAllow}, not: []string{wire.RBACFilter}},
		{name: "default deny without rules: an ALLOW set with no policy",
			entry: config.Authorization{Service: "orders", Default: config.AuthzDeny},
			want:  []string{wire.RBACFilter, `"rules":{}`}, not: []string{`"DENY"`, `"policies"`}}, // ALLOW is the zero action
		{name: "default allow with an allow rule ends with a catch-all named default",
			entry: config.Authorization{Service: "orders", Default: config.AuthzAllow, Rules: []config.AuthzRule{
				{Action: config.AuthzAllow, From: []string{"web"}}}},
			want: []string{`"allow-0"`, `"default":{"permissions":[{"any":true}],"principals":[{"any":true}]}`,
				`"principalName":{"exact":"spiffe://mesh.local/ns/default/svc/web"}`}},
		{name: "a Kubernetes caller is named in its namespace; * is any authenticated caller",
			entry: config.Authorization{Service: "orders", Default: config.AuthzDeny, Rules: []config.AuthzRule{
				{Action: config.AuthzAllow, From: []string{"web.shop", "*"}}}},
			want: []string{`"spiffe://mesh.local/ns/shop/svc/web"`, `{"authenticated":{}}`}},
		{name: "deny rules go in a DENY filter before the ALLOW one",
			entry: config.Authorization{Service: "orders", Default: config.AuthzDeny, Rules: []config.AuthzRule{
				{Action: config.AuthzAllow, Methods: []string{"GET"}}, {Action: config.AuthzDeny, Paths: []string{"/x"}}}},
			want: []string{`"action":"DENY"`, `"deny-1"`, `"urlPath":{"path":{"prefix":"/x"}}`, `"header":{"name":":method","stringMatch":{"exact":"GET"}}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Default().Control
			if tc.entry.Service != "" {
				c.Authorization = []config.Authorization{tc.entry}
			}
			got := inboundJSON(t, translateAuthz(t, c), orders)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("no %s in %s", w, got)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(got, w) {
					t.Errorf("%s in %s", w, got)
				}
			}
			if d, a := strings.Index(got, `"DENY"`), strings.Index(got, `"ALLOW"`); d >= 0 && a >= 0 && d > a {
				t.Errorf("the ALLOW filter comes before the DENY one: %s", got)
			}
		})
	}
}

// TestAuthzTCP: a tcp callee's inbound listener is a TCP proxy behind the
// RBAC network filters; allow rules with HTTP conditions are left out.
func TestAuthzTCP(t *testing.T) {
	got := inboundJSON(t, translateAuthz(t, authzConfig()), model.Node{ID: "vm-2", Service: "cache"})
	for _, w := range []string{wire.RBACNetworkFilter, wire.TCPProxy, `"cluster":"` + wire.LocalAppCluster + `"`,
		`"spiffe://example.org/ns/default/svc/web"`, `"spiffe://example.org/ns/default/svc/batch"`} {
		if !strings.Contains(got, w) {
			t.Errorf("no %s in %s", w, got)
		}
	}
	for _, w := range []string{wire.HTTPConnectionManager, "svc/orders", ":method"} {
		if strings.Contains(got, w) {
			t.Errorf("%s in %s", w, got)
		}
	}
}

// TestAuthzChangeRebuildsOnlyTheCallee: a rule change gives the callee's
// node a new inbound listener and leaves other nodes' own resources as
// they were (what makes the push live and small).
func TestAuthzChangeRebuildsOnlyTheCallee(t *testing.T) {
	m := authzModel()
	tr := translate.NewTranslator()
	c := authzConfig()
	tr.SetAuthorization(translate.NewAuthorization(c))
	first, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := first.Node(model.Node{ID: "vm-1", Service: "orders"})
	n2, _ := first.Node(model.Node{ID: "vm-2", Service: "cache"})
	c.Authorization[0].Default = config.AuthzAllow
	tr.SetAuthorization(translate.NewAuthorization(c))
	second, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := second.Node(model.Node{ID: "vm-1", Service: "orders"})
	m2, _ := second.Node(model.Node{ID: "vm-2", Service: "cache"})
	if m1.SameOwn(n1) {
		t.Error("orders' node kept its inbound listener after its rules changed")
	}
	if !m2.SameOwn(n2) {
		t.Error("cache's node got new resources though its rules did not change")
	}
}

// TestAuthzKubernetesCallee: a Kubernetes service (orders.shop) is a
// callee like any other (issue 13): a mesh-aware proxy fronting it gets
// its rules.
func TestAuthzKubernetesCallee(t *testing.T) {
	m := model.Model{Services: []model.Service{{Name: "orders.shop", Policy: config.DefaultPolicy(), Endpoints: []model.Endpoint{
		{ID: "pod-1", Node: "pod-1", Address: "10.1.0.1", Port: 15006, AppPort: 8080, Health: model.Healthy, Namespace: "shop"}}}}}
	c := config.Default().Control
	c.Authorization = []config.Authorization{{Service: "orders.shop", Default: config.AuthzDeny, Rules: []config.AuthzRule{
		{Action: config.AuthzAllow, From: []string{"web", "web.shop"}}}}}
	tr := translate.NewTranslator()
	tr.SetAuthorization(translate.NewAuthorization(c))
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	got := inboundJSON(t, mesh, model.Node{ID: "pod-1", Service: "orders.shop"})
	for _, w := range []string{wire.RBACFilter, `"spiffe://mesh.local/ns/default/svc/web"`, `"spiffe://mesh.local/ns/shop/svc/web"`} {
		if !strings.Contains(got, w) {
			t.Errorf("no %s in %s", w, got)
		}
	}
}
