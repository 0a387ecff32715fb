package controlplane_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// fakeHost is one machine the test CMDB serves.
type fakeHost struct {
	name, ip, site, region, status, role, tenant, env string
	tags                                              []string
	device                                            bool
}

// fakeCMDB serves hosts as NetBox's REST API (virtual machines and
// devices, one record per page so that every list paginates, and sites
// with their regions) and as a generic JSON list at /hosts. mode "500"
// or "garbage" makes every request fail.
type fakeCMDB struct {
	mu    sync.Mutex
	hosts []fakeHost
	mode  string
	token string
	srv   *httptest.Server
}

func newFakeCMDB(t *testing.T, token string, hosts ...fakeHost) *fakeCMDB {
	f := &fakeCMDB{hosts: hosts, token: token}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(f.serve)}}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCMDB) set(fn func(*fakeCMDB)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCMDB) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	auth := r.Header.Get("Authorization")
	if !strings.HasSuffix(auth, " "+f.token) {
		http.Error(w, `{"detail":"Invalid token"}`, http.StatusForbidden)
		return
	}
	switch f.mode {
	case "500":
		http.Error(w, "database down", http.StatusInternalServerError)
		return
	case "garbage":
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"results": [{"name": "x", "primary_ip4": `)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/hosts":
		var list []map[string]any
		for _, h := range f.hosts {
			list = append(list, map[string]any{
				"ip": h.ip, "hostname": h.name, "region": h.region, "zone": h.site,
				"env": h.env, "owner": h.tenant, "status": h.status,
				"labels": map[string]string{"role": h.role},
			})
		}
		_ = json.NewEncoder(w).Encode(list)
	case "/api/dcim/sites/":
		seen := map[string]bool{}
		var results []map[string]any
		for _, h := range f.hosts {
			if !seen[h.site] {
				seen[h.site] = true
				results = append(results, map[string]any{
					"id": len(results) + 1, "name": strings.ToUpper(h.site), "slug": h.site,
					"region": map[string]any{"id": 1, "name": h.region, "slug": h.region},
				})
			}
		}
		page(w, r, results)
	case "/api/virtualization/virtual-machines/", "/api/dcim/devices/":
		device := r.URL.Path == "/api/dcim/devices/"
		var results []map[string]any
		for i, h := range f.hosts {
			if h.device != device {
				continue
			}
			var tags []map[string]any
			for _, tg := range h.tags {
				tags = append(tags, map[string]any{"name": tg, "slug": tg})
			}
			results = append(results, map[string]any{
				"id": 100 + i, "name": h.name,
				"status":        map[string]any{"value": h.status, "label": h.status},
				"site":          map[string]any{"id": 1, "name": strings.ToUpper(h.site), "slug": h.site},
				"role":          map[string]any{"id": 1, "name": h.role, "slug": h.role},
				"tenant":        map[string]any{"id": 1, "name": h.tenant, "slug": h.tenant},
				"primary_ip4":   map[string]any{"id": 1, "address": h.ip + "/24"},
				"tags":          tags,
				"custom_fields": map[string]any{"env": h.env, "rack_unit": "u12"},
			})
		}
		page(w, r, results)
	default:
		http.NotFound(w, r)
	}
}

// page writes one record of a NetBox list per page, linking the next.
func page(w http.ResponseWriter, r *http.Request, results []map[string]any) {
	off, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	out := map[string]any{"count": len(results), "next": nil, "previous": nil, "results": []any{}}
	if off < len(results) {
		out["results"] = results[off : off+1]
	}
	if off+1 < len(results) {
		out["next"] = fmt.Sprintf("http://%s%s?limit=1&offset=%d", r.Host, r.URL.Path, off+1)
	}
	_ = json.NewEncoder(w).Encode(out)
}

func ordersLoadAssignment(t *testing.T, c *adsClient) *endpointv3.ClusterLoadAssignment {
	t.Helper()
	r := c.subscribe(resourcev3.EndpointType, []string{"orders"})
	return decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["orders"]
}

func lbEndpoint(cla *endpointv3.ClusterLoadAssignment, ip string) (*endpointv3.LbEndpoint, *corev3.Locality) {
	for _, l := range cla.GetEndpoints() {
		for _, ep := range l.GetLbEndpoints() {
			if ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == ip {
				return ep, l.GetLocality()
			}
		}
	}
	return nil, nil
}

// TestCMDB joins CMDB hosts to Consul endpoints by IP for both formats:
// locality and metadata from the CMDB, a status change to offline makes
// the endpoint DRAINING within one poll interval, and a failing or
// garbled CMDB leaves the last good metadata in force.
func TestCMDB(t *testing.T) {
	for _, tc := range []struct {
		name, format, path string
	}{
		{name: "netbox", format: "netbox", path: ""},
		{name: "generic", format: "generic", path: "/hosts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id1, id2 := "orders-cmdb-"+tc.name+"-1", "orders-cmdb-"+tc.name+"-2"
			register(t, regOf(id1, "orders", "127.0.0.51", 15006, "consul-zone"), "passing")
			register(t, regOf(id2, "orders", "127.0.0.52", 15006, "consul-zone"), "passing")
			cm := newFakeCMDB(t, "s3cret",
				fakeHost{name: "vm-51", ip: "127.0.0.51", site: "ams1", region: "eu-west", status: "active", role: "web", tenant: "shop", env: "prod", tags: []string{"pci"}},
				fakeHost{name: "bm-52", ip: "127.0.0.52", site: "ams2", region: "eu-west", status: "active", role: "web", tenant: "shop", env: "prod", device: true},
			)
			const interval = 400 * time.Millisecond
			p := startPlane(t, "", func(c *config.Config) {
				c.Control.CMDB.URL = cm.srv.URL + tc.path
				c.Control.CMDB.Format = tc.format
				c.Control.CMDB.Token = "s3cret"
				c.Control.CMDB.Interval = interval
			})
			// Wait for the CMDB's first view to be merged, then subscribe.
			meshtest.Eventually(t, 5*time.Second, func() error {
				m := p.Model()
				if s := m.Service("orders"); s != nil {
					for _, ep := range s.Endpoints {
						if ep.Address == "127.0.0.51" && ep.Locality.Zone == "ams1" {
							return nil
						}
					}
				}
				return fmt.Errorf("127.0.0.51 not in zone ams1 yet")
			})
			c := dialADS(t, p.xdsAddr, agentNode("vm-cmdb-"+tc.name, "", 0))
			cla := ordersLoadAssignment(t, c)
			ep, loc := lbEndpoint(cla, "127.0.0.51")
			if loc.GetZone() != "ams1" || loc.GetRegion() != "eu-west" {
				t.Errorf("locality %v, want eu-west/ams1 from the CMDB", loc)
			}
			md := ep.GetMetadata().GetFilterMetadata()["mesh"].GetFields()
			if md["env"].GetStringValue() != "prod" || md["hostname"].GetStringValue() != "vm-51" ||
				tc.format == "netbox" && (md["tenant"].GetStringValue() != "shop" || md["role"].GetStringValue() != "web") {
				t.Errorf("endpoint metadata %v lacks the CMDB's env, tenant, hostname", md)
			}

			start := time.Now()
			cm.set(func(f *fakeCMDB) { f.hosts[1].status = "offline" })
			r := c.recv(interval + time.Second)
			took := time.Since(start)
			c.ack(r, []string{"orders"})
			cla = decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["orders"]
			if ep, _ := lbEndpoint(cla, "127.0.0.52"); ep.GetHealthStatus() != corev3.HealthStatus_DRAINING {
				t.Fatalf("offline host's endpoint %v, want DRAINING", ep.GetHealthStatus())
			}
			if took > interval+300*time.Millisecond {
				t.Errorf("DRAINING took %s, more than one interval (%s) plus push time", took, interval)
			}
			t.Logf("CMDB status change reached the client in %s (interval %s)", took, interval)

			if strings.Contains(p.logs.String(), "s3cret") {
				t.Error("the CMDB token appears in the logs")
			}
			for _, mode := range []string{"500", "garbage"} {
				cm.set(func(f *fakeCMDB) { f.mode = mode; f.hosts[1].status = "active" })
				// Several failed polls: nothing is pushed, the last good
				// metadata (DRAINING, zone ams1) stays.
				c.quiet(3 * interval)
				if err := metricAbove(p.adminAddr, `mesh_control_source_errors_total{source="cmdb"}`, 0); err != nil {
					t.Errorf("%s: %v", mode, err)
				}
			}
			cm.set(func(f *fakeCMDB) { f.mode = "" })
			r = c.recv(interval + time.Second)
			cla = decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["orders"]
			if ep, _ := lbEndpoint(cla, "127.0.0.52"); ep.GetHealthStatus() != corev3.HealthStatus_HEALTHY {
				t.Fatalf("after recovery %v, want HEALTHY", ep.GetHealthStatus())
			}
		})
	}
}

// metricAbove fetches /metrics and checks that the sample named by series
// (name{labels}) is above min.
func metricAbove(admin, series string, min float64) error {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return err
			}
			if f <= min {
				return fmt.Errorf("%s = %g, want > %g", series, f, min)
			}
			return nil
		}
	}
	return fmt.Errorf("no %s in /metrics", series)
}
