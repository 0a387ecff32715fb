package chain_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// denyHeader is a policy written as a test would add a new one: one step,
// in this file only. It refuses outbound requests carrying
// x-test-deny with 403 test-denied and counts its refusals.
type denyHeader struct{ refused *atomic.Int64 }

func (denyHeader) Name() string { return "deny-header" }

func (s denyHeader) Serve(x *chain.Exchange, next chain.Next) error {
	if x.R.Header.Get("X-Test-Deny") != "" {
		return chain.Refuse(http.StatusForbidden, "test-denied", func() { s.refused.Add(1) })
	}
	return next.Serve(x)
}

// TestAddedStep puts a new step before tries on the outbound path of a
// real two-hop setup: it refuses what it should through the one edge
// (status, x-mesh-reason, body, the access log's reason, its own counter
// called once per refusal), lets the rest through, and shows in the
// path's step names in order.
func TestAddedStep(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	var refused atomic.Int64
	steps := chain.DefaultSteps()
	i := slices.IndexFunc(steps.Outbound, func(s chain.OutboundBuilder) bool { return s.Name == "tries" })
	steps.Outbound = slices.Insert(steps.Outbound, i, chain.OutboundBuilder{
		Name:  "deny-header",
		Build: func(*chain.UpstreamTarget) (chain.Step, error) { return denyHeader{refused: &refused}, nil },
	})
	tbl := &table.Table{Version: "1", Static: true, Default: config.DefaultPolicy(), Services: map[string]*table.Service{
		"orders": {Name: "orders", Policy: config.DefaultPolicy(), Endpoints: []endpoint.Endpoint{{Addr: b.inbound}}},
	}}
	fwd := proxy.NewForwarder(proxy.Options{})
	t.Cleanup(fwd.CloseIdleConnections)
	h, err := chain.CompileSteps(tbl, nil, chain.Local{Service: "web"}, fwd, chain.NewState(nil), zerolog.Nop(), steps)
	if err != nil {
		t.Fatal(err)
	}
	_, names := h.Steps("orders")
	if want := []string{"endpoints", "max-requests", "circuit-breaker", "route-timeout", "deny-header", "tries"}; !slices.Equal(names, want) {
		t.Fatalf("outbound steps %v, want %v", names, want)
	}

	log := &meshtest.SyncBuffer{}
	obsCfg := config.DefaultObservability()
	obsCfg.AccessLog.FlushInterval = 0
	obs, err := observability.NewObserver(obsCfg, observability.Options{Service: "web", Registry: prometheus.NewRegistry(), Stdout: log})
	if err != nil {
		t.Fatal(err)
	}
	sw := chain.NewSwitch(h)
	out := serve(t, hostA, obs.Instrument(observability.Outbound, "web", sw.Outbound()))

	get := func(deny bool) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, "http://"+out+"/x", nil)
		req.Host = "orders"
		if deny {
			req.Header.Set("X-Test-Deny", "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := get(false); resp.StatusCode != http.StatusOK || resp.Header.Get("X-App") != "b1" {
		t.Fatalf("allowed request: %d from %q", resp.StatusCode, resp.Header.Get("X-App"))
	}
	resp := get(true)
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Mesh-Reason") != "test-denied" || body.String() != "mesh: test-denied\n" {
		t.Fatalf("denied request: %d %q %q", resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), body.String())
	}
	if n := refused.Load(); n != 1 {
		t.Fatalf("the step's counter was called %d times, want 1", n)
	}
	if err := obs.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("access log has %d lines, want 2: %q", len(lines), log.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["reason"] != "test-denied" || rec["status"] != 403.0 || rec["upstream_service"] != "orders" {
		t.Fatalf("access log line of the refusal: %v", rec)
	}
}
