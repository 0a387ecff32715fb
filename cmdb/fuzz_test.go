package cmdb

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/mesh/config"
)

// addSeeds adds every testdata file matching glob to the fuzz corpus.
func addSeeds(f *testing.F, glob string) {
	files, err := filepath.Glob(filepath.Join("testdata", glob))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files %s: %v", glob, err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// checkView asserts what every decoded view promises, whatever the input.
func checkView(t *testing.T, hosts []Host, err error) {
	t.Helper()
	var se *SkippedError
	if err != nil && !errors.As(err, &se) {
		if hosts != nil {
			t.Fatalf("failed decode returned %d hosts: %v", len(hosts), err)
		}
		return
	}
	if hosts == nil {
		t.Fatal("a good view is nil")
	}
	if se != nil {
		if len(hosts) == 0 || se.Count <= 0 || len(hosts)+se.Count != se.Records || len(se.Reasons) > maxReasons {
			t.Fatalf("inconsistent skip report with %d hosts: %+v", len(hosts), se)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, h := range hosts {
		if !h.IP.IsValid() || h.IP.Is4In6() || h.IP.Zone() != "" {
			t.Fatalf("host %q has a bad IP %v", h.Hostname, h.IP)
		}
		if seen[h.IP] {
			t.Fatalf("duplicate IP %v in a view", h.IP)
		}
		seen[h.IP] = true
		if h.Status != strings.ToLower(strings.TrimSpace(h.Status)) {
			t.Fatalf("status %q is not normalized", h.Status)
		}
	}
}

func FuzzGeneric(f *testing.F) {
	addSeeds(f, "generic/*.json")
	for _, s := range []string{
		`[]`, `{}`, `null`, `[null]`, `[{"ip": "::ffff:10.0.0.1"}]`, `[{"ip": "fe80::1%eth0"}]`,
		`[{"ip": "10.0.0.1", "labels": {"a": {"b": {"c": {"d": {"e": [1, {"f": 2}]}}}}}}]`,
		`{"data": {"hosts": [{"net": {"primary_ip": "10.0.0.1/8"}, "location": [1]}]}}`,
		`[{"ip": "10.0.0.1", "tags": [1, true, null, "x"]}, {"ip": "10.0.0.1"}]`,
	} {
		f.Add([]byte(s))
	}
	plain := config.Default().Control.CMDB.Fields
	plain.Role, plain.Tenant, plain.Tags = "role", "tenant", "tags"
	decoders := []*Generic{
		{fields: plain},
		{listField: "data.hosts", fields: config.CMDBFields{
			IP: "net.primary_ip", Hostname: "name", Region: "location.region", Zone: "location.dc",
			Status: "lifecycle.state", Owner: "owner.team", Labels: "attrs", Tags: "tags.0",
		}},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, g := range decoders {
			hosts, err := g.decode(data)
			checkView(t, hosts, err)
		}
	})
}

func FuzzNetBox(f *testing.F) {
	addSeeds(f, "netbox/*.json")
	for _, s := range []string{
		`{"results": []}`, `{"results": null}`, `{"results": [1, "x", null, []], "next": 5}`,
		`{"results": [{"id": 1e99, "primary_ip4": {"address": "10.0.0.1/33"}}]}`,
		`{"results": [{"id": 1, "primary_ip4": {"address": "::ffff:10.0.0.1/96"}, "status": {"value": [1]}}]}`,
		`{"results": [{"id": 1, "primary_ip": {"address": "10.0.0.1"}, "custom_fields": {"a": [[{"x": 1}]], "b": {}}}], "next": "%zz"}`,
	} {
		f.Add([]byte(s))
	}
	n := &NetBox{envField: "env", ownerField: "owner"}
	f.Fuzz(func(t *testing.T, data []byte) {
		results, next, err := decodePage(data)
		if err != nil {
			if results != nil || next != "" {
				t.Fatalf("failed page decode returned results: %v", err)
			}
			return
		}
		_, _ = nextQuery(next, devicesPath)
		sites := map[int64]site{}
		_ = decodeSites(results, sites)
		s := &skips{}
		hosts := n.decodeHosts(kindDevice, results, sites, []Host{}, s)
		hosts = dedup(hosts, s)
		hosts, err = s.result("cmdb netbox", hosts)
		checkView(t, hosts, err)
	})
}
