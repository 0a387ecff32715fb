package translate_test

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire/wiretest"
)

// trafficSettings are the control.services of the traffic golden model
// (wiretest.AgentTraffic describes them).
func trafficSettings() map[string]config.ServiceSettings {
	searchCanary := config.DefaultPolicy()
	searchCanary.Timeout = time.Second
	searchCanary.LoadBalancer = config.LoadBalancer{Policy: "least_request"}
	return map[string]config.ServiceSettings{
		"orders": {
			Subsets: []config.Subset{
				{Name: "v1", Match: map[string]string{"version": "v1"}},
				{Name: "v2", Match: map[string]string{"version": "v2"}},
			},
			DefaultSubset: "v1",
			Routes: []config.Route{
				{Name: "testers", Headers: []config.HeaderMatch{{Name: "x-canary", Exact: "1"}}, Subset: "v2"},
				{Name: "canary", PathPrefix: "/api",
					Split:   []config.SplitTarget{{Subset: "v1", Weight: 90}, {Subset: "v2", Weight: 10}},
					Mirror:  config.RouteMirror{Subset: "v2", Percent: 5},
					Timeout: 2 * time.Second, Retries: config.RouteRetries{Attempts: 1, RetryOn: []string{"5xx"}}},
				{Name: "fault", Headers: []config.HeaderMatch{{Name: "x-fault"}}, Fault: config.RouteFault{
					Delay:   config.FaultDelay{Fixed: time.Second, Percent: 10},
					Abort:   config.FaultAbort{HTTPStatus: 503, Percent: 5},
					Headers: []config.HeaderMatch{{Name: "x-fault"}},
				}},
				{Name: "grpc-fault", PathPrefix: "/grpc.health.v1.Health/", Fault: config.RouteFault{
					Abort: config.FaultAbort{GRPCStatus: 14, Percent: 50},
				}},
				{Name: "legacy", Path: "/old", Redirect: config.RouteRedirect{Path: "/new", Code: 302}},
				{Name: "health", Path: "/mesh-health", DirectResponse: config.DirectResponse{Status: 200, Body: "ok"}},
				{Name: "pay", PathRegex: "^/pay/(.*)$", Methods: []string{"POST"}, Query: []config.QueryMatch{{Name: "dry_run"}},
					Service:                 "payments",
					RewriteRegex:            config.RegexRewrite{Pattern: "^/pay/(.*)$", Substitution: `/\1`},
					HeadersToAdd:            map[string]string{"x-from": "orders"},
					HeadersToRemove:         []string{"x-debug"},
					ResponseHeadersToAdd:    map[string]string{"x-routed": "pay"},
					ResponseHeadersToRemove: []string{"server"}},
			},
		},
		"search": {Subsets: []config.Subset{{Name: "canary", Match: map[string]string{"tag": "canary"}, Policy: searchCanary}}},
	}
}

// trafficModel is the traffic golden model: orders v1 ×2 (meta
// version=v1), v2 ×1 (tag version=v2); payments (Maglev on source_ip)
// and search (one canary instance).
func trafficModel() model.Model {
	pol := config.Policies{Default: config.DefaultPolicy(), Services: map[string]config.Policy{}}
	orders := config.DefaultPolicy()
	orders.LoadBalancer = config.LoadBalancer{Policy: "ring_hash", Hash: config.HashKey{Header: "x-user"}, RingSize: 2048}
	pol.Services["orders"] = orders
	pay := config.DefaultPolicy()
	pay.LoadBalancer = config.LoadBalancer{Policy: "maglev", Hash: config.HashKey{SourceIP: true}}
	pol.Services["payments"] = pay
	inst := func(svc, id, addr string, tags []string, meta map[string]string) model.Instance {
		m := map[string]string{"app_port": "8080", "mesh_zone": "eu-1a", "mesh_region": "eu"}
		for k, v := range meta {
			m[k] = v
		}
		return model.Instance{Service: svc, ID: id, Node: id, Address: addr, Port: 15006, Check: model.CheckPassing, Weight: 1, Tags: tags, Meta: m}
	}
	consul := model.View{Instances: []model.Instance{
		inst("orders", "orders-1", "10.0.1.1", nil, map[string]string{"version": "v1"}),
		inst("orders", "orders-2", "10.0.1.2", nil, map[string]string{"version": "v1"}),
		inst("orders", "orders-3", "10.0.1.3", []string{"version=v2"}, nil),
		inst("payments", "payments-1", "10.0.2.1", nil, nil),
		inst("search", "search-1", "10.0.3.1", nil, nil),
		inst("search", "search-2", "10.0.3.2", []string{"canary"}, nil),
	}}
	return model.Merge([]model.View{consul}, model.MergeOptions{Policies: pol, Services: trafficSettings()})
}

// TestGoldenTraffic writes and checks the traffic golden resources
// (wire/testdata), which the agent's tests read.
func TestGoldenTraffic(t *testing.T) {
	m := trafficModel()
	mesh, err := translate.NewTranslator().Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		node model.Node
	}{
		{wiretest.AgentTraffic, model.Node{ID: "vm-9"}},
		{wiretest.GRPCTraffic, model.Node{ID: "grpc-1", Proxyless: true}},
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
