package chain_test

import (
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// peerHeader stands in, in these tests, for the inbound mTLS hop: its
// value is put in the request's context as the caller's verified
// identity (identity.NewContext), as the mTLS listener will.
const peerHeader = "X-Test-Peer"

func spiffe(svc string) identity.ID {
	return identity.ID{TrustDomain: "mesh.local", Namespace: "default", Service: svc}
}

func from(svcs ...string) []rbac.Principal {
	var ps []rbac.Principal
	for _, s := range svcs {
		ps = append(ps, rbac.Principal{Authenticated: true, ID: spiffe(s).String()})
	}
	return ps
}

func exact(s string) rbac.StringMatch { return rbac.StringMatch{Exact: &s} }

var (
	anyone  = []rbac.Principal{{Any: true}}
	anyPerm = []rbac.Permission{{Any: true}}
)

func method(m string) rbac.Permission {
	return rbac.Permission{Header: &rbac.HeaderMatch{Name: ":method", Match: exact(m)}}
}

func pathPrefix(p string) rbac.Permission {
	return rbac.Permission{Path: &rbac.StringMatch{Prefix: p}}
}

// authzCallee is an app behind an agent's inbound path with pol, with
// access log and metrics.
type authzCallee struct {
	addr string
	app  *app
	log  *meshtest.SyncBuffer
	reg  *prometheus.Registry
}

func startAuthzCallee(t *testing.T, pol *rbac.Policy) *authzCallee {
	t.Helper()
	c := &authzCallee{app: newApp("orders"), log: &meshtest.SyncBuffer{}, reg: prometheus.NewRegistry()}
	appAddr := serve(t, hostB1, c.app)
	obsCfg := config.DefaultObservability()
	obsCfg.AccessLog.FlushInterval = 0
	obs, err := observability.NewObserver(obsCfg, observability.Options{Service: "orders", Registry: c.reg, Stdout: c.log})
	if err != nil {
		t.Fatal(err)
	}
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
	t.Cleanup(fwd.CloseIdleConnections)
	st := chain.NewState(nil).WithMetrics(obs.Metrics())
	h, err := chain.Compile(&table.Table{Version: "1", Static: true, Inbound: table.Inbound{Authorization: pol}}, nil,
		chain.Local{Service: "orders"}, fwd, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := h.Steps(""); !slices.Equal(in, []string{"authorization", "concurrency-limit", "app"}) {
		t.Fatalf("inbound steps %v, want authorization first", in)
	}
	inbound := obs.Instrument(observability.Inbound, "orders", chain.NewSwitch(h).Inbound(appAddr))
	c.addr = serve(t, hostB1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.Header.Get(peerHeader); p != "" {
			r = r.WithContext(identity.NewContext(r.Context(), spiffe(p)))
		}
		inbound.ServeHTTP(w, r)
	}))
	return c
}

type call struct {
	peer, method, path string
	header             map[string]string
}

func (c *authzCallee) do(t *testing.T, cl call) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(cmpOr(cl.method, "GET"), "http://"+c.addr+cmpOr(cl.path, "/"), nil)
	if cl.peer != "" {
		req.Header.Set(peerHeader, cl.peer)
	}
	for k, v := range cl.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestAuthorizationStep: deny rules, then allow rules, then the default,
// by caller identity, method, path and header; refusals are 403
// rbac-denied before the app sees anything.
func TestAuthorizationStep(t *testing.T) {
	pol := &rbac.Policy{
		Deny: []rbac.Rule{
			{Name: "no-batch", Principals: from("batch"), Permissions: anyPerm},
			{Name: "no-admin", Principals: anyone, Permissions: []rbac.Permission{pathPrefix("/admin/")}},
		},
		Allow: []rbac.Rule{
			{Name: "web-reads", Principals: from("web", "batch"), Permissions: []rbac.Permission{{And: []rbac.Permission{
				{Or: []rbac.Permission{method("GET"), method("HEAD")}}, pathPrefix("/api/")}}}},
			{Name: "canary", Principals: []rbac.Principal{{Authenticated: true}}, Permissions: []rbac.Permission{
				{Header: &rbac.HeaderMatch{Name: "X-Env", Match: rbac.StringMatch{Regex: regexp.MustCompile(`^(?:canary|staging)$`)}}}}},
			{Name: "health", Principals: anyone, Permissions: []rbac.Permission{pathPrefix("/health")}},
		},
		DefaultDeny: true,
	}
	c := startAuthzCallee(t, pol)
	for _, tc := range []struct {
		name string
		call call
		want int
		rule string
	}{
		{"allowed caller, method and path", call{peer: "web", path: "/api/orders"}, 200, "web-reads"},
		{"denied caller", call{peer: "batch", path: "/api/orders"}, 403, "no-batch"},
		{"deny before allow", call{peer: "web", path: "/admin/x"}, 403, "no-admin"},
		{"method not allowed: default deny", call{peer: "web", method: "POST", path: "/api/orders"}, 403, "default"},
		{"path not allowed: default deny", call{peer: "web", path: "/other"}, 403, "default"},
		{"unknown caller: default deny", call{peer: "billing", path: "/api/orders"}, 403, "default"},
		{"header rule", call{peer: "billing", path: "/x", header: map[string]string{"X-Env": "canary"}}, 200, "canary"},
		{"header regex matches the whole value", call{peer: "billing", path: "/x", header: map[string]string{"X-Env": "canary2"}}, 403, "default"},
		{"header rule needs an identity", call{path: "/x", header: map[string]string{"X-Env": "canary"}}, 403, "default"},
		{"no identity, open path", call{path: "/health"}, 200, "health"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			served := c.app.served.Load()
			resp, body := c.do(t, tc.call)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.want)
			}
			reached := c.app.served.Load() - served
			if tc.want == 403 {
				if r := resp.Header.Get(wire.ReasonHeader); r != wire.ReasonRBACDenied {
					t.Errorf("x-mesh-reason %q, want %s", r, wire.ReasonRBACDenied)
				}
				if reached != 0 {
					t.Error("a refused request reached the app")
				}
			} else if reached != 1 {
				t.Errorf("the app served %d requests, want 1", reached)
			}
			line := lastLine(c.log.String())
			if !strings.Contains(line, `"authz_rule":"`+tc.rule+`"`) {
				t.Errorf("access log line lacks the rule %s: %s", tc.rule, line)
			}
			if tc.call.peer != "" && !strings.Contains(line, `"peer_identity":"`+spiffe(tc.call.peer).String()+`"`) {
				t.Errorf("access log line lacks the caller's identity: %s", line)
			}
			if tc.want == 403 && !strings.Contains(line, `"reason":"rbac-denied"`) {
				t.Errorf("access log line lacks the reason: %s", line)
			}
		})
	}
	for _, m := range []struct {
		action, rule string
		want         float64
	}{{"allow", "web-reads", 1}, {"deny", "no-batch", 1}, {"deny", "no-admin", 1}, {"deny", "default", 5}, {"allow", "canary", 1}, {"allow", "health", 1}} {
		if got := counterValue(t, c.reg, "mesh_rbac_decisions_total", map[string]string{"service": "orders", "action": m.action, "rule": m.rule}); got != m.want {
			t.Errorf("mesh_rbac_decisions_total{action=%s,rule=%s} = %g, want %g", m.action, m.rule, got, m.want)
		}
	}
}

// TestAuthorizationDefaultAllow: with no allow set, what no deny rule
// matches is served, caller or not.
func TestAuthorizationDefaultAllow(t *testing.T) {
	c := startAuthzCallee(t, &rbac.Policy{Deny: []rbac.Rule{{Name: "no-delete", Principals: anyone, Permissions: []rbac.Permission{method("DELETE")}}}})
	if resp, _ := c.do(t, call{path: "/x"}); resp.StatusCode != 200 {
		t.Errorf("GET without identity: %d, want 200", resp.StatusCode)
	}
	if resp, _ := c.do(t, call{peer: "web", method: "DELETE", path: "/x"}); resp.StatusCode != 403 {
		t.Errorf("DELETE: %d, want 403", resp.StatusCode)
	}
}

// TestAuthorizationGRPC: a refused gRPC call gets PERMISSION_DENIED.
func TestAuthorizationGRPC(t *testing.T) {
	c := startAuthzCallee(t, &rbac.Policy{DefaultDeny: true})
	resp, _ := c.do(t, call{method: "POST", path: "/pkg.Svc/Method", header: map[string]string{"Content-Type": "application/grpc"}})
	if got := resp.Header.Get("Grpc-Status"); got != "7" {
		t.Errorf("grpc-status %q, want 7 (PERMISSION_DENIED)", got)
	}
	if r := resp.Header.Get(wire.ReasonHeader); r != wire.ReasonRBACDenied {
		t.Errorf("x-mesh-reason %q, want %s", r, wire.ReasonRBACDenied)
	}
}

// TestAuthorizationLeftOutWithoutPolicy: no policy, no step.
func TestAuthorizationLeftOutWithoutPolicy(t *testing.T) {
	h, err := chain.Compile(&table.Table{Version: "1", Static: true, Inbound: table.Inbound{Authorization: &rbac.Policy{}}}, nil,
		chain.Local{Service: "orders"}, proxy.NewForwarder(proxy.Options{}), chain.NewState(nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := h.Steps(""); slices.Contains(in, "authorization") {
		t.Errorf("inbound steps %v: an empty policy needs no step", in)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
