package kubeexport

import (
	"fmt"
	"testing"

	"github.com/meshvm/mesh/controlplane/model"
)

func TestDesiredExportsOnlyRegistryEndpoints(t *testing.T) {
	m := &model.Model{Services: []model.Service{
		{Name: "orders", Endpoints: []model.Endpoint{
			{ID: "o1", Address: "192.0.2.1", Port: 15006, Health: model.Healthy, Locality: model.Locality{Zone: "z1"}},
			{ID: "o2", Address: "192.0.2.2", Port: 15006, Health: model.Draining},
			{ID: "o3", Address: "192.0.2.3", Port: 15007, Health: model.Unhealthy},
			{ID: "shop/10.0.0.1:8080", Address: "10.0.0.1", Port: 8080, Health: model.Healthy, Source: model.SourceKubernetes},
			{ID: "o4", Address: "vm-4.example.internal", Port: 15006, Health: model.Healthy},
		}},
		{Name: "orders.shop", Endpoints: []model.Endpoint{
			{ID: "shop/10.0.0.1:8080", Address: "10.0.0.1", Port: 8080, Health: model.Healthy, Source: model.SourceKubernetes},
		}},
		{Name: "Billing_v2", Endpoints: []model.Endpoint{{ID: "b1", Address: "192.0.2.9", Port: 80, Health: model.Healthy}}},
	}}
	d, invalid := Desired(m, "mesh-vms")
	if len(d) != 1 || len(invalid) != 1 || invalid[0] != "Billing_v2" {
		t.Fatalf("exported %v, invalid %v; want orders only, Billing_v2 invalid", keysOf(d), invalid)
	}
	o := d["orders"]
	if p := o.service.Spec.Ports[0]; p.Port != 15006 || p.Name != PortName || len(o.service.Spec.Selector) != 0 {
		t.Fatalf("service port %+v selector %v", p, o.service.Spec.Selector)
	}
	var got []string
	for _, sl := range o.slices {
		for _, e := range sl.Endpoints {
			got = append(got, fmt.Sprintf("%s %s %d ready=%v serving=%v terminating=%v zone=%v",
				sl.Name, e.Addresses[0], *sl.Ports[0].Port, *e.Conditions.Ready, *e.Conditions.Serving, *e.Conditions.Terminating, deref(e.Zone)))
		}
	}
	want := []string{
		"orders-v4-15006-0 192.0.2.1 15006 ready=true serving=true terminating=false zone=z1",
		"orders-v4-15006-0 192.0.2.2 15006 ready=false serving=true terminating=true zone=",
		"orders-v4-15007-0 192.0.2.3 15007 ready=false serving=false terminating=false zone=",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("slices:\n%v\nwant:\n%v", got, want)
	}
}

func TestDesiredChunksSlices(t *testing.T) {
	s := model.Service{Name: "big"}
	for i := range 250 {
		s.Endpoints = append(s.Endpoints, model.Endpoint{ID: fmt.Sprint(i), Address: fmt.Sprintf("10.1.%d.%d", i/200, i%200), Port: 80, Health: model.Healthy})
	}
	d, _ := Desired(&model.Model{Services: []model.Service{s}}, "ns")
	sls := d["big"].slices
	if len(sls) != 3 || len(sls[0].Endpoints) != 100 || len(sls[2].Endpoints) != 50 {
		t.Fatalf("%d slices; want 100+100+50 endpoints", len(sls))
	}
}

func keysOf(m map[string]exported) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
