package xdsconf_test

import (
	"net/http"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
	"github.com/meshvm/mesh/xdsclient"
)

const td = "spiffe://example.org/ns/"

// TestAuthorizationFromGolden: the rules controlplane/translate writes for
// orders (wire/testdata/agent-authz.golden.json, from its authzConfig)
// decide as written: deny rules first, then allow rules, then the default.
func TestAuthorizationFromGolden(t *testing.T) {
	tab, err := xdsconf.Translate(wiretest.Load(t, wiretest.AgentAuthz))
	if err != nil {
		t.Fatal(err)
	}
	p := tab.Inbound.Authorization
	if p == nil || !p.DefaultDeny {
		t.Fatalf("authorization %+v, want default deny", p)
	}
	for _, tc := range []struct {
		name, peer, method, path string
		header                   http.Header
		allowed                  bool
		rule                     string
	}{
		{"a denied caller, whatever it asks", td + "default/svc/batch", "GET", "/api/x", nil, false, "no-batch"},
		{"an allowed caller, method and path", td + "default/svc/web", "GET", "/api/x", nil, true, "allow-2"},
		{"a Kubernetes caller", td + "shop/svc/web", "HEAD", "/api/", nil, true, "allow-2"},
		{"deny path before the allow rule", td + "default/svc/web", "GET", "/admin/x", nil, false, "deny-1"},
		{"another method: default deny", td + "default/svc/web", "POST", "/api/x", nil, false, rbac.DefaultRule},
		{"no identity needed for health", "", "GET", "/health", nil, true, "health"},
		{"headers need an authenticated caller", "", "GET", "/x", http.Header{"X-Env": {"prod"}, "X-Debug": {"1"}}, false, rbac.DefaultRule},
		{"headers from any authenticated caller", td + "default/svc/billing", "GET", "/x", http.Header{"X-Env": {"staging"}, "X-Debug": {"1"}}, true, "allow-3"},
		{"the regex matches the whole value", td + "default/svc/billing", "GET", "/x", http.Header{"X-Env": {"production"}, "X-Debug": {"1"}}, false, rbac.DefaultRule},
		{"every header must match", td + "default/svc/billing", "GET", "/x", http.Header{"X-Env": {"prod"}}, false, rbac.DefaultRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.header
			if h == nil {
				h = http.Header{}
			}
			d := p.Evaluate(&rbac.Request{Peer: peerID(t, tc.peer), Authenticated: tc.peer != "", Method: tc.method, Path: tc.path, Header: h})
			if d.Allowed != tc.allowed || d.Rule != tc.rule {
				t.Errorf("decision %+v, want allowed=%v by %s", d, tc.allowed, tc.rule)
			}
		})
	}
}

// TestAuthorizationTCPFromGolden: a tcp callee's RBAC network filters
// decide on the caller alone.
func TestAuthorizationTCPFromGolden(t *testing.T) {
	tab, err := xdsconf.Translate(wiretest.Load(t, wiretest.AgentAuthzTCP))
	if err != nil {
		t.Fatal(err)
	}
	p := tab.Inbound.Authorization
	if p == nil || !p.L4() {
		t.Fatalf("authorization %+v, want an L4 policy", p)
	}
	for _, tc := range []struct {
		peer    string
		allowed bool
		rule    string
	}{
		{td + "default/svc/batch", false, "deny-0"},
		{td + "default/svc/web", true, "allow-1"},
		{td + "default/svc/orders", false, rbac.DefaultRule},
		{"", false, rbac.DefaultRule},
	} {
		d := p.Evaluate(&rbac.Request{Peer: peerID(t, tc.peer), Authenticated: tc.peer != ""})
		if d.Allowed != tc.allowed || d.Rule != tc.rule {
			t.Errorf("%q: decision %+v, want allowed=%v by %s", tc.peer, d, tc.allowed, tc.rule)
		}
	}
}

func peerID(t *testing.T, s string) identity.ID {
	t.Helper()
	if s == "" {
		return identity.ID{}
	}
	id, err := identity.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func inboundWith(t *testing.T, chains ...[]*rbachttpv3.RBAC) xdsclient.Resources {
	t.Helper()
	res := wiretest.Load(t, wiretest.AgentAuthz)
	l := proto.Clone(res.Listeners[wire.InboundListener]).(*listenerv3.Listener)
	base := l.FilterChains[0]
	l.FilterChains = nil
	for _, filters := range chains {
		fc := proto.Clone(base).(*listenerv3.FilterChain)
		var h hcmv3.HttpConnectionManager
		if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		router := h.HttpFilters[len(h.HttpFilters)-1]
		h.HttpFilters = nil
		for _, f := range filters {
			a, err := anypb.New(f)
			if err != nil {
				t.Fatal(err)
			}
			h.HttpFilters = append(h.HttpFilters, &hcmv3.HttpFilter{Name: wire.RBACFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
		}
		h.HttpFilters = append(h.HttpFilters, router)
		a, err := anypb.New(&h)
		if err != nil {
			t.Fatal(err)
		}
		fc.Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		l.FilterChains = append(l.FilterChains, fc)
	}
	res.Listeners[wire.InboundListener] = l
	return res
}

func set(action rbacconfigv3.RBAC_Action, pols map[string]*rbacconfigv3.Policy) *rbachttpv3.RBAC {
	return &rbachttpv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: action, Policies: pols}}
}

var (
	anyPrincipal  = []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}}
	anyPermission = []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}}
	okPolicy      = map[string]*rbacconfigv3.Policy{"p": {Principals: anyPrincipal, Permissions: anyPermission}}
)

// TestAuthorizationRejectsWhatItCannotEnforce: RBAC the agent would not
// enforce as Envoy does is an error naming it (the push is NACKed and the
// last good table keeps serving), never silently ignored.
func TestAuthorizationRejectsWhatItCannotEnforce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		res    func(t *testing.T) xdsclient.Resources
		reject string
	}{
		{"two ALLOW filters", func(t *testing.T) xdsclient.Resources {
			return inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_ALLOW, okPolicy), set(rbacconfigv3.RBAC_ALLOW, okPolicy)})
		}, "more than one ALLOW"},
		{"a destination port permission", func(t *testing.T) xdsclient.Resources {
			return inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{"port": {
				Principals: anyPrincipal, Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: 22}}}}})})
		}, "DestinationPort is not supported"},
		{"a source ip principal", func(t *testing.T) xdsclient.Resources {
			return inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{"ip": {
				Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{}}}, Permissions: anyPermission}})})
		}, "DirectRemoteIp is not supported"},
		{"a CEL condition", func(t *testing.T) xdsclient.Resources {
			cel := &rbacconfigv3.Policy{}
			if err := protojson.Unmarshal([]byte(`{"permissions":[{"any":true}],"principals":[{"any":true}],"condition":{"constExpr":{"boolValue":true}}}`), cel); err != nil {
				t.Fatal(err)
			}
			return inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"cel": cel})})
		}, "CEL conditions are not supported"},
		{"filter chains that disagree", func(t *testing.T) xdsclient.Resources {
			return inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_ALLOW, okPolicy)}, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_DENY, okPolicy)})
		}, "filter chain 1 has other RBAC rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := xdsconf.Translate(tc.res(t))
			if err == nil || !strings.Contains(err.Error(), tc.reject) || !strings.Contains(err.Error(), wire.InboundListener) {
				t.Fatalf("error %v, want one naming the listener and %q", err, tc.reject)
			}
		})
	}
	t.Run("the same rules on every filter chain are one policy", func(t *testing.T) {
		tab, err := xdsconf.Translate(inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_DENY, okPolicy)}, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_DENY, okPolicy)}))
		if err != nil {
			t.Fatal(err)
		}
		if p := tab.Inbound.Authorization; p == nil || len(p.Deny) != 1 || p.DefaultDeny {
			t.Errorf("authorization %+v, want one deny rule, default allow", p)
		}
	})
	t.Run("LOG filters enforce nothing", func(t *testing.T) {
		tab, err := xdsconf.Translate(inboundWith(t, []*rbachttpv3.RBAC{set(rbacconfigv3.RBAC_LOG, okPolicy)}))
		if err != nil {
			t.Fatal(err)
		}
		if p := tab.Inbound.Authorization; !p.Empty() {
			t.Errorf("authorization %+v, want none enforced", p)
		}
	})
}
