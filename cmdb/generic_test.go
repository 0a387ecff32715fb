package cmdb_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/config"
)

func TestGenericFetch(t *testing.T) {
	tests := []struct {
		name        string
		file        string
		cfg         func(*config.CMDB)
		want        []cmdb.Host
		wantSkipped []string // reasons; none means a clean view
	}{
		{
			name: "plain list with default field names",
			file: "generic/list.json",
			cfg: func(c *config.CMDB) {
				c.Fields.Role, c.Fields.Tenant, c.Fields.Tags = "role", "tenant", "tags"
			},
			want: []cmdb.Host{
				{
					IP: ip("192.168.1.11"), Hostname: "app-01", Region: "eu-west", Zone: "ams1", Env: "prod", Owner: "team-a",
					Status: "active", Role: "app", Tenant: "shop", Tags: []string{"mesh", "frontend"},
					Labels: map[string]string{"rack": "r12", "tier": "1", "pci": "true", "hw.cpu": "epyc", "hw.mem_gb": "128", "disks": "sda,sdb"},
				},
				{
					IP: ip("192.168.1.12"), Hostname: "app-02", Region: "eu-west", Zone: "ams1", Env: "prod", Owner: "team-a",
					Status: "maintenance", Tags: []string{"mesh", "backend"},
				},
				{
					IP: ip("2001:db8::13"), Hostname: "app-03", Region: "us-east", Zone: "nyc1", Env: "staging", Owner: "team-b",
					Status: "offline",
				},
			},
			wantSkipped: []string{
				`host[2] "no-ip": field "ip": empty address`,
				`host[3] "bad-ip": field "ip": "10.0.0.300" is not an IP address`,
			},
		},
		{
			name: "object-wrapped list with nested fields",
			file: "generic/wrapped.json",
			cfg: func(c *config.CMDB) {
				c.ListField = "data.hosts"
				c.Fields = config.CMDBFields{
					IP: "net.primary_ip", Hostname: "name", Region: "location.region", Zone: "location.dc",
					Env: "env", Owner: "owner.team", Status: "lifecycle.state", Labels: "attrs",
				}
			},
			want: []cmdb.Host{
				{
					IP: ip("10.1.2.3"), Hostname: "db-01", Region: "eu-central", Zone: "fra1", Env: "prod", Owner: "dba",
					Status: "active", Labels: map[string]string{"kernel": "6.1"},
				},
				{IP: ip("10.1.2.4"), Hostname: "db-02", Region: "eu-central", Zone: "fra1", Env: "prod", Owner: "dba", Status: "failed"},
			},
		},
		{
			name: "list index in a path",
			file: "generic/wrapped.json",
			cfg: func(c *config.CMDB) {
				c.ListField = "data.hosts"
				c.Fields = config.CMDBFields{IP: "net.primary_ip", Hostname: "name"}
			},
			want: []cmdb.Host{{IP: ip("10.1.2.3"), Hostname: "db-01"}, {IP: ip("10.1.2.4"), Hostname: "db-02"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCMDB(t, "Authorization", "Bearer "+testToken)
			f.set("/hosts", readTestdata(t, tc.file))
			cfg := genericConfig(f.url() + "/hosts")
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			g, err := cmdb.NewGeneric(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := g.Fetch(context.Background())
			if len(tc.wantSkipped) == 0 && err != nil {
				t.Fatal(err)
			}
			if len(tc.wantSkipped) > 0 {
				se := skippedOf(t, err)
				if se.Count != len(tc.wantSkipped) {
					t.Errorf("skipped %d, want %d: %v", se.Count, len(tc.wantSkipped), err)
				}
				for _, want := range tc.wantSkipped {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("report %q\nlacks %q", err, want)
					}
				}
			}
			assertHosts(t, hosts, tc.want)
			r := f.requestLog()[0]
			if r.Header.Get("Accept") != "application/json" {
				t.Errorf("Accept %q", r.Header.Get("Accept"))
			}
		})
	}
}

func TestGenericAuth(t *testing.T) {
	tests := []struct {
		name                 string
		header, scheme       string
		wantHeader, wantAuth string
	}{
		{name: "default bearer", wantHeader: "Authorization", wantAuth: "Bearer " + testToken},
		{name: "other scheme", scheme: "Token", wantHeader: "Authorization", wantAuth: "Token " + testToken},
		{name: "api key header", header: "X-API-Key", wantHeader: "X-API-Key", wantAuth: testToken},
		{name: "api key header with scheme", header: "X-Auth", scheme: "Key", wantHeader: "X-Auth", wantAuth: "Key " + testToken},
		{name: "bare token in Authorization", scheme: "none", wantHeader: "Authorization", wantAuth: testToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCMDB(t, tc.wantHeader, tc.wantAuth)
			f.set("/", []byte(`[{"ip": "10.0.0.1"}]`))
			cfg := genericConfig(f.url() + "/")
			cfg.AuthHeader, cfg.AuthScheme = tc.header, tc.scheme
			g, err := cmdb.NewGeneric(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := g.Fetch(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(hosts) != 1 || hosts[0].IP != ip("10.0.0.1") {
				t.Errorf("hosts %+v", hosts)
			}
		})
	}

	t.Run("no token sends no header", func(t *testing.T) {
		f := newFakeCMDB(t, "Authorization", "")
		f.set("/", []byte(`[]`))
		cfg := genericConfig(f.url() + "/")
		cfg.Token = ""
		g, err := cmdb.NewGeneric(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		hosts, err := g.Fetch(context.Background())
		if err != nil || hosts == nil || len(hosts) != 0 {
			t.Fatalf("an empty CMDB is an empty view: %v, %v", hosts, err)
		}
	})
}

func TestGenericFailures(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		handler http.HandlerFunc // instead of body
		cfg     func(*config.CMDB)
		wantErr string
	}{
		{name: "object without list_field", body: `{"results": []}`,
			wantErr: `cmdb generic: payload: expected a list of hosts, got object (set list_field if the list is inside an object)`},
		{name: "list_field is an object", body: `{"results": {"a": 1}}`, cfg: func(c *config.CMDB) { c.ListField = "results" },
			wantErr: `cmdb generic: field "results": expected a list, got object`},
		{name: "list_field missing", body: `{"data": {}}`, cfg: func(c *config.CMDB) { c.ListField = "data.hosts" },
			wantErr: `cmdb generic: field "data.hosts": missing`},
		{name: "list_field through a string", body: `{"data": "x"}`, cfg: func(c *config.CMDB) { c.ListField = "data.hosts" },
			wantErr: `cmdb generic: field "data": expected an object, got string`},
		{name: "list where an object is expected", body: `[]`, cfg: func(c *config.CMDB) { c.ListField = "results" },
			wantErr: `cmdb generic: payload: expected an object holding field "results", got list`},
		{name: "garbage", body: `{"hosts": [`, wantErr: `cmdb generic: invalid JSON: unexpected EOF`},
		{name: "empty body", body: ``, wantErr: `cmdb generic: invalid JSON: empty body`},
		{name: "trailing data", body: `[] []`, wantErr: `cmdb generic: invalid JSON: data after the top-level value`},
		{name: "wrong mapping skips every host", body: `[{"address": "10.0.0.1"}, {"address": "10.0.0.2"}]`,
			wantErr: `cmdb generic: no usable host: skipped 2 of 2 hosts: host[0]: field "ip": missing; host[1]: field "ip": missing`},
		{name: "hosts are not objects", body: `["10.0.0.1", 7]`,
			wantErr: `no usable host: skipped 2 of 2 hosts: host[0]: expected an object, got string; host[1]: expected an object, got number`},
		{name: "500", handler: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte("upstream database unavailable\n"))
		}, wantErr: `/hosts: status 500 Internal Server Error: upstream database unavailable`},
		{name: "error body echoing the token", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "bad credentials: "+r.Header.Get("Authorization"), http.StatusUnauthorized)
		}, wantErr: `status 401 Unauthorized: bad credentials: Bearer <redacted>`},
		{name: "oversize", cfg: func(c *config.CMDB) { c.MaxBytes = 1000 }, handler: func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte("[" + strings.Repeat(`{"ip": "10.0.0.1"},`, 200) + `{"ip": "10.0.0.2"}]`))
		}, wantErr: `is larger than max_bytes (1000)`},
		{name: "hangs", cfg: func(c *config.CMDB) { c.Timeout = 150 * time.Millisecond }, handler: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`[{"ip": "10.0.0.1"},`))
			w.(http.Flusher).Flush()
			select { // the body never ends
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, wantErr: `/hosts: read body: timed out after 150ms`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCMDB(t, "Authorization", "Bearer "+testToken)
			f.set("/hosts", []byte(tc.body))
			if tc.handler != nil {
				f.setOverride(tc.handler)
			}
			cfg := genericConfig(f.url() + "/hosts")
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			g, err := cmdb.NewGeneric(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			hosts, err := g.Fetch(context.Background())
			if err == nil || cmdb.IsSkipped(err) || hosts != nil {
				t.Fatalf("want a failure, got %d hosts, %v", len(hosts), err)
			}
			noToken(t, err)
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*config.CMDB)
		wantErr string
	}{
		{name: "no ip field", cfg: func(c *config.CMDB) { c.Fields.IP = "" }, wantErr: "cmdb generic: fields.ip is required"},
		{name: "empty path segment", cfg: func(c *config.CMDB) { c.Fields.Zone = "location..dc" },
			wantErr: `cmdb generic: fields.zone: "location..dc" is not a dotted path (empty segment)`},
		{name: "bad list_field", cfg: func(c *config.CMDB) { c.ListField = ".results" }, wantErr: `list_field: ".results" is not a dotted path`},
		{name: "not http", cfg: func(c *config.CMDB) { c.URL = "ftp://cmdb/hosts" }, wantErr: `url: must be an http:// or https:// URL, got "ftp://cmdb/hosts"`},
		{name: "password stays out", cfg: func(c *config.CMDB) { c.URL = "file://admin:hunter2@cmdb/" }, wantErr: `got "file://admin:xxxxx@cmdb/"`},
		{name: "unparsable URL keeps its password", cfg: func(c *config.CMDB) { c.URL = "http://admin:hunter2@cmdb:port/" }, wantErr: `url: not a URL: invalid port`},
		{name: "unknown format", cfg: func(c *config.CMDB) { c.Format = "csv" }, wantErr: `cmdb: unknown format "csv"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := genericConfig("http://127.0.0.1:1/hosts")
			tc.cfg(&cfg)
			_, err := cmdb.New(cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks a password: %v", err)
			}
		})
	}
	t.Run("by format", func(t *testing.T) {
		for format, want := range map[string]string{"generic": "*cmdb.Generic", "netbox": "*cmdb.NetBox"} {
			cfg := genericConfig("http://127.0.0.1:1/")
			cfg.Format = format
			f, err := cmdb.New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := typeName(f); got != want {
				t.Errorf("format %s: got %s", format, got)
			}
		}
	})
}

func typeName(v any) string {
	switch v.(type) {
	case *cmdb.Generic:
		return "*cmdb.Generic"
	case *cmdb.NetBox:
		return "*cmdb.NetBox"
	}
	return "?"
}

func TestHostDraining(t *testing.T) {
	statuses := config.Default().Control.CMDB.DrainingStatuses
	tests := []struct {
		name   string
		status string
		want   bool
	}{
		{name: "active", status: "active", want: false},
		{name: "offline", status: "offline", want: true},
		{name: "decommissioning", status: "decommissioning", want: true},
		{name: "empty", status: "", want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := (cmdb.Host{Status: tc.status}).Draining(statuses); got != tc.want {
				t.Errorf("Draining(%q) = %v", tc.status, got)
			}
		})
	}
	if !(cmdb.Host{Status: "maintenance"}).Draining([]string{" Maintenance "}) {
		t.Error("configured statuses compare case-insensitively")
	}
}
