package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/meshtest"
)

// withPolicy returns cfg with service's policy edited by edit (starting
// from the default policy).
func withPolicy(cfg config.Config, service string, edit func(*config.Policy)) config.Config {
	p := cfg.Policies.Default
	edit(&p)
	cfg.Policies.Services = map[string]config.Policy{service: p}
	return cfg
}

// Reload of a running control plane: a policy change reaches a connected
// client as the changed cluster only, a policy that does not translate is
// refused with nothing pushed, and restart-only settings are named and
// kept.
func TestReload(t *testing.T) {
	register(t, regOf("reloadpol-1", "reloadpol", "127.0.0.62", 15006, "z1"), "passing")
	var cfg config.Config
	p := startPlane(t, "", func(c *config.Config) { cfg = *c })
	meshtest.Eventually(t, 5*time.Second, func() error {
		if p.Model().Service("reloadpol") == nil {
			return fmt.Errorf("reloadpol not in the model yet")
		}
		return nil
	})
	c := dialADS(t, p.xdsAddr, agentNode("vm-reloadpol", "", 0))
	r := c.subscribe(resourcev3.ClusterType, nil)
	clusterOf := func() *clusterv3.Cluster {
		t.Helper()
		cl := decode(t, r, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })["reloadpol"]
		if cl == nil {
			t.Fatalf("no reloadpol cluster in %s", r.GetVersionInfo())
		}
		return cl
	}
	if got := clusterOf().GetConnectTimeout().AsDuration(); got != cfg.Policies.Default.ConnectTimeout {
		t.Fatalf("connect timeout %s, want the default %s", got, cfg.Policies.Default.ConnectTimeout)
	}
	ctx := context.Background()

	for _, tc := range []struct {
		name        string
		next        config.Config
		wantErr     string
		wantRestart []string
		// wantConnect is the connect timeout pushed; 0: nothing pushed.
		wantConnect time.Duration
	}{
		{
			name:        "policy change pushed",
			next:        withPolicy(cfg, "reloadpol", func(p *config.Policy) { p.ConnectTimeout = 3 * time.Second }),
			wantConnect: 3 * time.Second,
		},
		{
			name:    "policy that does not translate refused",
			next:    withPolicy(cfg, "reloadpol", func(p *config.Policy) { p.ConnectTimeout = -time.Second }),
			wantErr: "apply the new config: resource \"reloadpol\": invalid Cluster.ConnectTimeout",
		},
		{
			name: "restart-only settings named and kept",
			next: func() config.Config {
				n := withPolicy(cfg, "reloadpol", func(p *config.Policy) { p.ConnectTimeout = 3 * time.Second })
				n.Control.AdminAddr = "127.0.0.1:1"
				n.Control.XDSAddr = "127.0.0.1:2"
				n.Consul.Addr = "127.0.0.1:3"
				n.Consul.Token = "t0ken"
				return n
			}(),
			wantRestart: []string{"control.xds_addr", "control.admin_addr", "consul.addr", "consul.token"},
		},
		{
			name:        "back to the default policy",
			next:        cfg,
			wantConnect: cfg.Policies.Default.ConnectTimeout,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restart, err := p.Reload(ctx, tc.next)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Reload error %v, want one naming %s", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Reload: %v", err)
			}
			if !slices.Equal(restart, tc.wantRestart) {
				t.Errorf("restart needed for %v, want %v", restart, tc.wantRestart)
			}
			if tc.wantConnect == 0 {
				c.quiet(300 * time.Millisecond)
			} else {
				r = c.recv(2 * time.Second)
				if r.GetTypeUrl() != resourcev3.ClusterType {
					t.Fatalf("got %s, want the changed cluster", r.GetTypeUrl())
				}
				c.ack(r, nil)
				if got := clusterOf().GetConnectTimeout().AsDuration(); got != tc.wantConnect {
					t.Errorf("connect timeout %s, want %s", got, tc.wantConnect)
				}
				c.quiet(300 * time.Millisecond) // nothing else changed
			}
			if code, err := httpGet("http://" + p.adminAddr + "/ready"); err != nil || code != http.StatusOK {
				t.Errorf("admin on its running address: %d, %v", code, err)
			}
		})
	}
}

// endpointOf returns the model's endpoint of service at ip, or nil.
func endpointOf(m *model.Model, service, ip string) *model.Endpoint {
	if m == nil {
		return nil
	}
	s := m.Service(service)
	if s == nil {
		return nil
	}
	for i := range s.Endpoints {
		if s.Endpoints[i].Address == ip {
			return &s.Endpoints[i]
		}
	}
	return nil
}

// A reload applies CMDB settings: draining statuses at once on the last
// CMDB view; a new CMDB URL restarts the poller, the last good metadata
// staying in force until the new CMDB answers; no URL drops the CMDB.
func TestReloadCMDB(t *testing.T) {
	const svc, ip = "cmdbreload", "127.0.0.53"
	register(t, regOf("cmdbreload-1", svc, ip, 15006, "consul-zone"), "passing")
	oldCMDB := newFakeCMDB(t, "tok-a", fakeHost{name: "vm-53", ip: ip, site: "ams1", region: "eu-west", status: "active", env: "prod"})
	newCMDB := newFakeCMDB(t, "tok-b", fakeHost{name: "vm-53", ip: ip, site: "ams1", region: "eu-west", status: "active", env: "staging"})
	newCMDB.set(func(f *fakeCMDB) { f.mode = "500" })
	const interval = 300 * time.Millisecond
	var cfg config.Config
	p := startPlane(t, "", func(c *config.Config) {
		c.Control.CMDB.URL = oldCMDB.srv.URL + "/hosts"
		c.Control.CMDB.Token = "tok-a"
		c.Control.CMDB.Interval = interval
		cfg = *c
	})
	envIs := func(want string) func() error {
		return func() error {
			ep := endpointOf(p.Model(), svc, ip)
			if ep == nil || ep.Metadata.Env != want {
				return fmt.Errorf("endpoint %+v, want env %q", ep, want)
			}
			return nil
		}
	}
	meshtest.Eventually(t, 5*time.Second, envIs("prod"))
	ctx := context.Background()

	// Draining statuses apply to the CMDB view in force, without a fetch
	// (the CMDB is down).
	oldCMDB.set(func(f *fakeCMDB) { f.mode = "500" })
	next := cfg
	next.Control.CMDB.DrainingStatuses = []string{"offline", "active"}
	if _, err := p.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if ep := endpointOf(p.Model(), svc, ip); ep == nil || ep.Health != model.Draining || ep.Metadata.Env != "prod" {
		t.Fatalf("after reloading draining statuses: %+v, want DRAINING with the last CMDB metadata", ep)
	}

	// A new CMDB that fails: the last good view stays; its errors count.
	next = cfg
	next.Control.CMDB.URL = newCMDB.srv.URL + "/hosts"
	next.Control.CMDB.Token = "tok-b"
	if _, err := p.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if ep := endpointOf(p.Model(), svc, ip); ep == nil || ep.Health != model.Healthy {
		t.Fatalf("after restoring the draining statuses: %+v, want HEALTHY", ep)
	}
	time.Sleep(3 * interval)
	if err := envIs("prod")(); err != nil {
		t.Fatalf("the last good CMDB view was dropped while the new CMDB fails: %v", err)
	}
	if err := metricAbove(p.adminAddr, `mesh_control_source_errors_total{source="cmdb"}`, 1); err != nil {
		t.Error(err)
	}
	// It answers: its view replaces the old one.
	newCMDB.set(func(f *fakeCMDB) { f.mode = "" })
	meshtest.Eventually(t, 5*time.Second, envIs("staging"))

	// No URL: the CMDB's metadata goes, and so does the source.
	next = cfg
	next.Control.CMDB.URL = ""
	if _, err := p.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, envIs(""))
	if err := metricAbove(p.adminAddr, `mesh_control_source_errors_total{source="cmdb"}`, -1); err == nil ||
		!strings.Contains(err.Error(), "no mesh_control_source") {
		t.Errorf("a disabled CMDB still has metrics: %v", err)
	}
	resp, err := http.Get("http://" + p.adminAddr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dump struct {
		Sources map[string]json.RawMessage `json:"sources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	if _, ok := dump.Sources["cmdb"]; ok || len(dump.Sources) != 1 {
		t.Errorf("config_dump sources %v, want only consul", keys(dump.Sources))
	}
}

// hasRateLimit reports whether the mesh_inbound listener in an LDS
// response runs the local rate limit filter.
func hasRateLimit(t *testing.T, r *discovery.DiscoveryResponse) bool {
	t.Helper()
	l := decode(t, r, func() *listenerv3.Listener { return &listenerv3.Listener{} })["mesh_inbound"]
	if l == nil {
		t.Fatalf("no mesh_inbound listener in %v", r.GetResources())
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(hcm.GetHttpFilters(), func(f *hcmv3.HttpFilter) bool {
		return f.GetName() == "envoy.filters.http.local_ratelimit"
	})
}

// A reloaded default policy reaches an agent whose service has no
// instance in Consul yet (its app port comes from its node metadata): the
// control plane's fallback policy is reloaded too.
func TestReloadDefaultPolicy(t *testing.T) {
	var cfg config.Config
	p := startPlane(t, "", func(c *config.Config) { cfg = *c })
	c := dialADS(t, p.xdsAddr, agentNode("vm-ghost", "ghost-svc", 9000))
	c.subscribe(resourcev3.ClusterType, nil)
	if hasRateLimit(t, c.subscribe(resourcev3.ListenerType, nil)) {
		t.Fatal("rate limit before any policy set one")
	}
	next := cfg
	next.Policies.Default.RateLimit = config.RateLimit{MaxTokens: 5, TokensPerFill: 5, FillInterval: time.Second}
	if _, err := p.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	for range 4 { // the local_app cluster may change first
		r := c.recv(2 * time.Second)
		c.ack(r, nil)
		if r.GetTypeUrl() == resourcev3.ListenerType {
			if !hasRateLimit(t, r) {
				t.Fatal("the reloaded default rate limit is not on the inbound listener")
			}
			return
		}
	}
	t.Fatal("no listener pushed after the default policy changed")
}
