package cmdb

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/meshvm/mesh/config"
)

// genericFleet is a generic payload of n hosts shaped like testdata's.
func genericFleet(n int) []byte {
	hosts := make([]map[string]any, n)
	for i := range hosts {
		hosts[i] = map[string]any{
			"hostname": fmt.Sprintf("app-%05d", i), "ip": fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
			"region": "eu-west", "zone": "ams1", "env": "prod", "owner": "team-a", "status": "Active",
			"labels": map[string]any{"rack": "r12", "tier": 1, "hw": map[string]any{"cpu": "epyc"}},
		}
	}
	b, _ := json.Marshal(hosts)
	return b
}

func BenchmarkGenericDecode10k(b *testing.B) {
	data := genericFleet(10000)
	g := &Generic{fields: config.Default().Control.CMDB.Fields}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		hosts, err := g.decode(data)
		if err != nil || len(hosts) != 10000 {
			b.Fatal(len(hosts), err)
		}
	}
}

// BenchmarkNetBoxDecodePage decodes one full page of 1000 VMs (the default
// page size), each a copy of a testdata VM with its own address.
func BenchmarkNetBoxDecodePage(b *testing.B) {
	var page map[string]any
	if err := json.Unmarshal(mustRead(b, "testdata/netbox/vms_page1.json"), &page); err != nil {
		b.Fatal(err)
	}
	tmpl, _ := json.Marshal(page["results"].([]any)[0])
	results := make([]any, 1000)
	for i := range results {
		var vm map[string]any
		_ = json.Unmarshal(tmpl, &vm)
		vm["primary_ip4"].(map[string]any)["address"] = fmt.Sprintf("10.1.%d.%d/16", i>>8, i&255)
		results[i] = vm
	}
	page["results"] = results
	data, _ := json.Marshal(page)
	n := &NetBox{envField: "env", ownerField: "owner"}
	sites := map[int64]site{1: {region: "eu-west"}}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		results, _, err := decodePage(data)
		if err != nil {
			b.Fatal(err)
		}
		s := &skips{}
		if hosts := n.decodeHosts(kindVM, results, sites, nil, s); len(hosts) != 1000 {
			b.Fatal(len(hosts), s.reasons)
		}
	}
}

func mustRead(b *testing.B, path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return data
}
