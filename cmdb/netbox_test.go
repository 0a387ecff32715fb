package cmdb_test

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/config"
)

const (
	sitesAPI   = "/api/dcim/sites/"
	vmsAPI     = "/api/virtualization/virtual-machines/"
	devicesAPI = "/api/dcim/devices/"
)

// newFakeNetBox serves the testdata NetBox: 4 sites on 2 pages, 5 VMs on 3
// pages (one without a primary IP), 3 devices (one in NetBox 3.x shape).
// Its next links name another host (netbox.internal), as NetBox behind a
// proxy does.
func newFakeNetBox(t *testing.T) *fakeCMDB {
	f := newFakeCMDB(t, "Authorization", "Token "+testToken)
	f.set(sitesAPI, readTestdata(t, "netbox/sites_page1.json"))
	f.set(sitesAPI+"@2", readTestdata(t, "netbox/sites_page2.json"))
	f.set(vmsAPI, readTestdata(t, "netbox/vms_page1.json"))
	f.set(vmsAPI+"@2", readTestdata(t, "netbox/vms_page2.json"))
	f.set(vmsAPI+"@4", readTestdata(t, "netbox/vms_page3.json"))
	f.set(devicesAPI, readTestdata(t, "netbox/devices.json"))
	return f
}

func netboxConfig(url string) config.CMDB {
	c := config.Default().Control.CMDB
	c.URL = url
	c.Format = "netbox"
	c.Token = testToken
	c.Timeout = 2 * time.Second
	c.PageSize = 2
	return c
}

// wantNetBox is the testdata NetBox as hosts, in fetch order (VMs first).
var wantNetBox = []cmdb.Host{
	{
		IP: ip("10.10.0.11"), Hostname: "web-01", Region: "eu-west", Zone: "ams1", Env: "prod", Owner: "team-payments",
		Status: "active", Role: "web", Tenant: "payments", Tags: []string{"mesh", "web-tier"},
		Labels: map[string]string{
			"netbox.kind": "virtual_machine", "netbox.id": "11", "netbox.cluster": "ams1-kvm", "netbox.platform": "debian-12",
			"netbox.site_group": "production", "env": "prod", "owner": "team-payments", "cost_center": "4711",
			"monitoring": "true", "backup_policy": "Nightly", "services": "checkout,cart",
		},
	},
	{
		IP: ip("10.10.0.12"), Hostname: "web-02", Region: "eu-west", Zone: "ams1", Env: "prod", Owner: "team-payments",
		Status: "active", Role: "web", Tenant: "payments", Tags: []string{"mesh"},
		Labels: map[string]string{
			"netbox.kind": "virtual_machine", "netbox.id": "12", "netbox.cluster": "ams1-kvm", "netbox.platform": "debian-12",
			"netbox.site_group": "production", "env": "prod", "owner": "team-payments",
		},
	},
	{
		IP: ip("10.20.0.13"), Hostname: "api-01", Region: "eu-central", Zone: "fra1", Env: "prod", Owner: "search",
		Status: "offline", Role: "api", Tenant: "search",
		Labels: map[string]string{
			"netbox.kind": "virtual_machine", "netbox.id": "13", "netbox.cluster": "fra1-kvm", "netbox.platform": "debian-12",
			"netbox.site_group": "production", "env": "prod",
		},
	},
	{
		IP: ip("10.99.0.15"), Hostname: "stage-01", Status: "staged",
		Labels: map[string]string{"netbox.kind": "virtual_machine", "netbox.id": "15", "netbox.platform": "debian-12"},
	},
	{
		IP: ip("10.30.0.21"), Hostname: "bm-search-01", Region: "us-east", Zone: "nyc1", Env: "prod", Owner: "team-search",
		Status: "active", Role: "api", Tenant: "search", Tags: []string{"mesh"},
		Labels: map[string]string{
			"netbox.kind": "device", "netbox.id": "21", "netbox.location": "hall-a", "netbox.rack": "R01",
			"netbox.device_type": "poweredge-r650", "env": "prod", "owner": "team-search",
		},
	},
	{
		IP: ip("10.30.0.22"), Hostname: "bm-search-02", Region: "us-east", Zone: "nyc1", Env: "prod", Owner: "search",
		Status: "decommissioning", Role: "api", Tenant: "search", Tags: []string{"mesh"},
		Labels: map[string]string{"netbox.kind": "device", "netbox.id": "22", "netbox.device_type": "poweredge-r650", "env": "prod"},
	},
	{
		IP: ip("10.99.0.23"), Hostname: "lab-01", Zone: "lab", Status: "planned", Role: "web",
		Labels: map[string]string{"netbox.kind": "device", "netbox.id": "23", "netbox.device_type": "poweredge-r650"},
	},
}

func assertHosts(t *testing.T, got, want []cmdb.Host) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d hosts, want %d:\n%+v", len(got), len(want), got)
	}
	for i := range min(len(got), len(want)) {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("host %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func TestNetBoxFetch(t *testing.T) {
	f := newFakeNetBox(t)
	nb, err := cmdb.NewNetBox(netboxConfig(f.url()), nil)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := nb.Fetch(context.Background())
	// db-01 has no primary IP: left out and reported, the rest is a good view.
	se := skippedOf(t, err)
	if se.Count != 1 || se.Records != 8 || !strings.Contains(se.Error(), `virtual_machine "db-01": no primary IP`) {
		t.Errorf("skipped report: %+v", se)
	}
	assertHosts(t, hosts, wantNetBox)

	var paths []string
	for _, r := range f.requestLog() {
		paths = append(paths, r.URL.RequestURI())
		if got := r.Header.Get("Authorization"); got != "Token "+testToken {
			t.Errorf("%s: Authorization %q", r.URL, got)
		}
		if got := r.Header.Get("Accept"); got != "application/json" {
			t.Errorf("%s: Accept %q", r.URL, got)
		}
	}
	want := []string{
		"/api/dcim/sites/?limit=2",
		"/api/dcim/sites/?limit=2&offset=2",
		"/api/virtualization/virtual-machines/?limit=2&exclude=config_context",
		"/api/virtualization/virtual-machines/?exclude=config_context&limit=2&offset=2",
		"/api/virtualization/virtual-machines/?exclude=config_context&limit=2&offset=4",
		"/api/dcim/devices/?limit=2&exclude=config_context",
	}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("requests:\n got %q\nwant %q", paths, want)
	}
}

func TestNetBoxBaseURLAndAuth(t *testing.T) {
	tests := []struct {
		name       string
		path       string // appended to the server URL in the config
		token      string
		authScheme string
		authHeader string
		wantHeader string
		wantValue  string
	}{
		{name: "v1 token", token: testToken, wantHeader: "Authorization", wantValue: "Token " + testToken},
		{name: "v2 token is a bearer token", token: "nbt_abc." + testToken, wantHeader: "Authorization", wantValue: "Bearer nbt_abc." + testToken},
		{name: "explicit scheme", token: testToken, authScheme: "Bearer", wantHeader: "Authorization", wantValue: "Bearer " + testToken},
		{name: "custom header sends the bare token", token: testToken, authHeader: "X-Api-Key", wantHeader: "X-Api-Key", wantValue: testToken},
		{name: "base URL with /api/", path: "/api/", token: testToken, wantHeader: "Authorization", wantValue: "Token " + testToken},
		{name: "base URL with trailing slash", path: "/", token: testToken, wantHeader: "Authorization", wantValue: "Token " + testToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeNetBox(t)
			f.authHeader, f.authValue = tc.wantHeader, tc.wantValue
			cfg := netboxConfig(f.url() + tc.path)
			cfg.Token, cfg.AuthScheme, cfg.AuthHeader = tc.token, tc.authScheme, tc.authHeader
			cfg.PageSize = 0 // the default, 1000: our fake ignores it
			nb, err := cmdb.NewNetBox(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := nb.Fetch(context.Background())
			if !cmdb.IsSkipped(err) {
				t.Fatalf("fetch: %v", err)
			}
			if len(hosts) != len(wantNetBox) {
				t.Errorf("got %d hosts, want %d", len(hosts), len(wantNetBox))
			}
			if got := f.requestLog()[0].URL.RequestURI(); got != "/api/dcim/sites/?limit=1000" {
				t.Errorf("first request %q", got)
			}
		})
	}
}

func TestNetBoxFailures(t *testing.T) {
	page1 := readTestdata(t, "netbox/vms_page1.json")
	tests := []struct {
		name    string
		cfg     func(*config.CMDB)
		setup   func(t *testing.T, f *fakeCMDB)
		wantErr []string // substrings of the error
	}{
		{
			name:    "wrong token",
			cfg:     func(c *config.CMDB) { c.Token = "wrong-" + testToken },
			wantErr: []string{"GET http://", "/api/dcim/sites/?limit=2: status 403 Forbidden", "Invalid token"},
		},
		{
			name: "server error",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.setOverride(func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, "<h1>Server Error (500)</h1>", http.StatusInternalServerError)
				})
			},
			wantErr: []string{"status 500 Internal Server Error", "Server Error (500)"},
		},
		{
			name: "results is not a list",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.set(vmsAPI+"@2", []byte(`{"count": 5, "next": null, "previous": null, "results": {"id": 1}}`))
			},
			wantErr: []string{`cmdb netbox: /api/virtualization/virtual-machines/ page 2: field "results": expected a list, got object`},
		},
		{
			name:    "not a list page",
			setup:   func(t *testing.T, f *fakeCMDB) { f.set(devicesAPI, []byte(`[{"id": 1}]`)) },
			wantErr: []string{"/api/dcim/devices/ page 1: payload: expected a NetBox list page (an object with results), got list"},
		},
		{
			name: "html login page",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.setOverride(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/html; charset=utf-8")
					_, _ = w.Write([]byte("<!DOCTYPE html><html><body>Log in</body></html>"))
				})
			},
			wantErr: []string{"/api/dcim/sites/ page 1: invalid JSON", "(content-type text/html)"},
		},
		{
			name:    "truncated JSON",
			setup:   func(t *testing.T, f *fakeCMDB) { f.set(vmsAPI, page1[:len(page1)/2]) },
			wantErr: []string{"/api/virtualization/virtual-machines/ page 1: invalid JSON: unexpected EOF"},
		},
		{
			name: "garbage site",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.set(sitesAPI+"@2", []byte(`{"count": 4, "next": null, "results": [{"id": 4, "region": "eu"}]}`))
			},
			wantErr: []string{`/api/dcim/sites/ page 2: site[0]: field "region": expected an object or null, got string`},
		},
		{
			name: "pagination loop",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.set(vmsAPI+"@4", jsonEdit(t, readTestdata(t, "netbox/vms_page3.json"), func(p map[string]any) {
					p["next"] = "http://netbox.internal/api/virtualization/virtual-machines/?exclude=config_context&limit=2&offset=2"
				}))
			},
			wantErr: []string{"page 3: pagination loop: next page", "offset=2"},
		},
		{
			name:    "more pages than max_pages",
			cfg:     func(c *config.CMDB) { c.MaxPages = 2 },
			wantErr: []string{"/api/virtualization/virtual-machines/: more than 2 pages (max_pages)"},
		},
		{
			name: "next link to another list",
			setup: func(t *testing.T, f *fakeCMDB) {
				f.set(devicesAPI, jsonEdit(t, readTestdata(t, "netbox/devices.json"), func(p map[string]any) {
					p["next"] = "http://evil.example/steal/?offset=3"
				}))
			},
			wantErr: []string{`field "next": "http://evil.example/steal/?offset=3" is not a link to another page of /api/dcim/devices/`},
		},
		{
			name: "every host unusable",
			setup: func(t *testing.T, f *fakeCMDB) {
				noIP := func(p map[string]any) {
					for _, r := range p["results"].([]any) {
						r.(map[string]any)["primary_ip4"] = nil
						r.(map[string]any)["primary_ip"] = nil
					}
				}
				for _, k := range []struct{ key, file string }{
					{vmsAPI, "vms_page1.json"}, {vmsAPI + "@2", "vms_page2.json"}, {vmsAPI + "@4", "vms_page3.json"}, {devicesAPI, "devices.json"},
				} {
					f.set(k.key, jsonEdit(t, readTestdata(t, "netbox/"+k.file), noIP))
				}
			},
			wantErr: []string{"cmdb netbox: no usable host: skipped 8 of 8 hosts", "no primary IP"},
		},
		{
			name: "body over max_bytes",
			cfg:  func(c *config.CMDB) { c.MaxBytes = 4096 },
			setup: func(t *testing.T, f *fakeCMDB) {
				f.setOverride(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					w.Header().Set("Content-Length", strconv.Itoa(len(page1)))
					_, _ = w.Write(page1)
				})
			},
			wantErr: []string{fmt.Sprintf("/api/dcim/sites/?limit=2: response of %d bytes is larger than max_bytes (4096)", len(page1))},
		},
		{
			name: "streamed body over max_bytes",
			cfg:  func(c *config.CMDB) { c.MaxBytes = 4096 },
			setup: func(t *testing.T, f *fakeCMDB) {
				f.setOverride(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(`{"count": 1, "next": null, "results": [`))
					w.(http.Flusher).Flush() // no Content-Length: chunked
					_, _ = w.Write([]byte(`"` + strings.Repeat("x", 8192) + `"]}`))
				})
			},
			wantErr: []string{"/api/dcim/sites/?limit=2: response is larger than max_bytes (4096)"},
		},
		{
			name: "server hangs",
			cfg:  func(c *config.CMDB) { c.Timeout = 200 * time.Millisecond },
			setup: func(t *testing.T, f *fakeCMDB) {
				f.setOverride(func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
				})
			},
			wantErr: []string{"/api/dcim/sites/?limit=2: timed out after 200ms"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeNetBox(t)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			cfg := netboxConfig(f.url())
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			nb, err := cmdb.NewNetBox(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := nb.Fetch(context.Background())
			if err == nil || cmdb.IsSkipped(err) {
				t.Fatalf("want an error, got %d hosts, err %v", len(hosts), err)
			}
			if hosts != nil {
				t.Errorf("a failed fetch returned %d hosts", len(hosts))
			}
			noToken(t, err)
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
		})
	}
}

func TestNetBoxLenientShapes(t *testing.T) {
	tests := []struct {
		name   string
		device string // one device record
		want   cmdb.Host
	}{
		{
			name:   "bare strings for status and primary_ip4",
			device: `{"id": 1, "name": "a", "status": "Active", "primary_ip4": "10.0.0.1"}`,
			want:   cmdb.Host{IP: ip("10.0.0.1"), Hostname: "a", Status: "active", Labels: map[string]string{"netbox.kind": "device", "netbox.id": "1"}},
		},
		{
			name:   "IPv6-only host uses primary_ip",
			device: `{"id": 2, "name": "b", "primary_ip4": null, "primary_ip": {"address": "2001:db8::2/64", "family": {"value": 6}}}`,
			want:   cmdb.Host{IP: ip("2001:db8::2"), Hostname: "b", Labels: map[string]string{"netbox.kind": "device", "netbox.id": "2"}},
		},
		{
			name: "3.x device_role, unnamed device, unknown site, tags as names",
			device: `{"id": 3, "name": null, "primary_ip4": {"address": "10.0.0.3/32"}, "device_role": {"name": "Edge"},
				"site": {"id": 99, "slug": "new-site"}, "tags": [{"name": "Mesh Enabled"}, "raw"], "custom_fields": {"env": "dev", "n": 1.5}}`,
			want: cmdb.Host{IP: ip("10.0.0.3"), Zone: "new-site", Role: "Edge", Env: "dev", Tags: []string{"Mesh Enabled", "raw"},
				Labels: map[string]string{"netbox.kind": "device", "netbox.id": "3", "env": "dev", "n": "1.5"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeNetBox(t)
			f.set(vmsAPI, []byte(`{"count": 0, "next": null, "previous": null, "results": []}`))
			f.set(devicesAPI, []byte(`{"count": 1, "next": null, "previous": null, "results": [`+tc.device+`]}`))
			nb, err := cmdb.NewNetBox(netboxConfig(f.url()), nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := nb.Fetch(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			assertHosts(t, hosts, []cmdb.Host{tc.want})
		})
	}
}

func TestNetBoxGarbageRecordsAreSkipped(t *testing.T) {
	f := newFakeNetBox(t)
	f.set(devicesAPI, []byte(`{"count": 4, "next": null, "results": [
		"not an object",
		{"id": 31, "name": "bad-site", "primary_ip4": {"address": "10.0.0.31/24"}, "site": "ams1"},
		{"id": 32, "name": "bad-ip", "primary_ip4": {"address": "10.0.0.999/24"}},
		{"id": 33, "name": "dup-of-web-01", "primary_ip4": {"address": "10.10.0.11/24"}}
	]}`))
	nb, err := cmdb.NewNetBox(netboxConfig(f.url()), nil)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := nb.Fetch(context.Background())
	se := skippedOf(t, err)
	if se.Records != 9 || se.Count != 5 || len(hosts) != 4 {
		t.Errorf("records %d, skipped %d, hosts %d; want 9, 5, 4", se.Records, se.Count, len(hosts))
	}
	for _, want := range []string{
		`virtual_machine "db-01": no primary IP`,
		`device "": expected an object, got string`,
		`device "bad-site": field "site": expected an object or null, got string`,
		`device "bad-ip": field "primary_ip4.address": "10.0.0.999/24" is not an IP address`,
		`host "dup-of-web-01": duplicate ip 10.10.0.11 (also "web-01")`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("report %q\nlacks %q", err, want)
		}
	}
}
