package model_test

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
)

func TestMerge(t *testing.T) {
	opts := model.MergeOptions{DrainingStatuses: []string{"Offline", "failed"}, Policies: config.Policies{Default: config.DefaultPolicy()}}
	inst := func(id, addr string, check model.Check, meta map[string]string) model.Instance {
		return model.Instance{Service: "orders", ID: id, Node: "n-" + id, Address: addr, Port: 15006, Check: check, Meta: meta}
	}
	host := func(ip, status, region, zone string) model.Host {
		return model.Host{IP: netip.MustParseAddr(ip), Hostname: "h-" + ip, Status: status, Region: region, Zone: zone, Env: "prod"}
	}
	for _, tc := range []struct {
		name  string
		views []model.View
		want  []model.Endpoint
	}{
		{
			name:  "passing and warning are healthy, critical unhealthy",
			views: []model.View{{Instances: []model.Instance{inst("a", "10.0.0.1", model.CheckPassing, nil), inst("b", "10.0.0.2", model.CheckWarning, nil), inst("c", "10.0.0.3", model.CheckCritical, nil)}}},
			want: []model.Endpoint{
				{ID: "a", Node: "n-a", Address: "10.0.0.1", Port: 15006, Health: model.Healthy, Weight: 1},
				{ID: "b", Node: "n-b", Address: "10.0.0.2", Port: 15006, Health: model.Healthy, Weight: 1},
				{ID: "c", Node: "n-c", Address: "10.0.0.3", Port: 15006, Health: model.Unhealthy, Weight: 1},
			},
		},
		{
			name: "CMDB locality wins per field, draining status is case-insensitive",
			views: []model.View{
				{Instances: []model.Instance{inst("a", "10.0.0.1", model.CheckPassing, map[string]string{"mesh_zone": "cz", "mesh_region": "cr", "app_port": "8080"})}},
				{Hosts: []model.Host{host("10.0.0.1", "OFFLINE", "", "z1")}},
			},
			want: []model.Endpoint{{ID: "a", Node: "n-a", Address: "10.0.0.1", Port: 15006, Health: model.Draining, Weight: 1, AppPort: 8080,
				Locality: model.Locality{Region: "cr", Zone: "z1"},
				Metadata: model.Metadata{Meta: map[string]string{"mesh_zone": "cz", "mesh_region": "cr", "app_port": "8080"}, Hostname: "h-10.0.0.1", Env: "prod", Status: "OFFLINE"}}},
		},
		{
			name: "critical beats draining",
			views: []model.View{
				{Instances: []model.Instance{inst("a", "10.0.0.1", model.CheckCritical, nil)}},
				{Hosts: []model.Host{host("10.0.0.1", "failed", "", "")}},
			},
			want: []model.Endpoint{{ID: "a", Node: "n-a", Address: "10.0.0.1", Port: 15006, Health: model.Unhealthy, Weight: 1,
				Metadata: model.Metadata{Hostname: "h-10.0.0.1", Env: "prod", Status: "failed"}}},
		},
		{
			name:  "duplicate address keeps the healthier",
			views: []model.View{{Instances: []model.Instance{inst("a", "10.0.0.1", model.CheckCritical, nil), inst("b", "10.0.0.1", model.CheckPassing, nil)}}},
			want:  []model.Endpoint{{ID: "b", Node: "n-b", Address: "10.0.0.1", Port: 15006, Health: model.Healthy, Weight: 1}},
		},
		{
			name:  "instances without address or port are dropped",
			views: []model.View{{Instances: []model.Instance{inst("a", "", model.CheckPassing, nil), {Service: "orders", ID: "b", Address: "10.0.0.2"}}}},
			want:  []model.Endpoint{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := model.Merge(tc.views, opts)
			if len(m.Services) != 1 || m.Services[0].Name != "orders" {
				t.Fatalf("services %+v", m.Services)
			}
			if got := m.Services[0].Endpoints; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("endpoints\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestMergePolicyAndOrder(t *testing.T) {
	pay := config.DefaultPolicy()
	pay.Timeout = 0
	opts := model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy(), Services: map[string]config.Policy{"payments": pay}}}
	m := model.Merge([]model.View{{Instances: []model.Instance{
		{Service: "payments", ID: "p", Address: "10.0.0.1", Port: 1},
		{Service: "consul", ID: "consul", Address: "10.0.0.9", Port: 8300},
		{Service: "orders", ID: "o", Address: "10.0.0.2", Port: 1},
	}}}, opts)
	if len(m.Services) != 2 || m.Services[0].Name != "orders" || m.Services[1].Name != "payments" {
		t.Fatalf("services %+v, want orders, payments (consul left out)", m.Services)
	}
	if m.Service("payments").Policy.Timeout != 0 || m.Service("orders").Policy.Timeout == 0 {
		t.Error("per-service policy not applied")
	}
	if m.Service("nope") != nil {
		t.Error("unknown service found")
	}
}
