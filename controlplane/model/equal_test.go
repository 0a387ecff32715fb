package model_test

import (
	"testing"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
)

func TestModelEqual(t *testing.T) {
	base := func() model.Model {
		return model.Model{Services: []model.Service{{
			Name: "orders", Policy: config.DefaultPolicy(),
			Endpoints: []model.Endpoint{{
				ID: "orders-1", Node: "vm-1", Address: "10.0.0.1", Port: 15006, Health: model.Healthy, Weight: 1,
				Locality: model.Locality{Region: "r1", Zone: "z1"},
				Metadata: model.Metadata{Tags: []string{"a"}, Meta: map[string]string{"app_port": "8080"}, Labels: map[string]string{"k": "v"}},
			}},
		}}}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*model.Model)
		equal bool
	}{
		{name: "same", edit: func(*model.Model) {}, equal: true},
		{name: "nil and empty tags", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Metadata.HostTags = []string{} }, equal: true},
		{name: "health", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Health = model.Unhealthy }},
		{name: "weight", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Weight = 2 }},
		{name: "zone", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Locality.Zone = "z2" }},
		{name: "meta value", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Metadata.Meta = map[string]string{"app_port": "9090"} }},
		{name: "label", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Metadata.Labels = nil }},
		{name: "tag", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Metadata.Tags = []string{"b"} }},
		{name: "cmdb status", edit: func(m *model.Model) { m.Services[0].Endpoints[0].Metadata.Status = "offline" }},
		{name: "policy", edit: func(m *model.Model) { m.Services[0].Policy.Retries.Attempts++ }},
		{name: "endpoint added", edit: func(m *model.Model) {
			m.Services[0].Endpoints = append(m.Services[0].Endpoints, m.Services[0].Endpoints[0])
		}},
		{name: "service renamed", edit: func(m *model.Model) { m.Services[0].Name = "payments" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.edit(&b)
			if got := a.Equal(&b); got != tc.equal {
				t.Fatalf("Equal = %v, want %v", got, tc.equal)
			}
		})
	}
}
