package model_test

import (
	"reflect"
	"testing"

	. "github.com/meshvm/mesh/controlplane/model"
)

func TestMergeConflictsAcrossSources(t *testing.T) {
	vm := Instance{Service: "orders", ID: "orders-1", Address: "10.0.0.1", Port: 8080, Check: CheckPassing}
	pod := Instance{Service: "orders", ID: "shop/10.0.0.1:8080", Address: "10.0.0.1", Port: 8080, Check: CheckPassing,
		Source: SourceKubernetes, Namespace: "shop", Identity: Identity("shop", "orders"), Locality: Locality{Zone: "z9"}}
	other := Instance{Service: "orders", ID: "shop/10.0.0.2:8080", Address: "10.0.0.2", Port: 8080, Check: CheckPassing,
		Source: SourceKubernetes, Locality: Locality{Region: "r1", Zone: "z1"}}
	m := Merge([]View{{Instances: []Instance{vm}}, {Instances: []Instance{pod, other}}}, MergeOptions{})
	s := m.Service("orders")
	if s == nil || len(s.Endpoints) != 2 {
		t.Fatalf("orders: %+v", s)
	}
	if s.Endpoints[0].ID != "orders-1" || s.Endpoints[0].Source != "" {
		t.Errorf("kept %+v; want the registry's instance on a tie", s.Endpoints[0])
	}
	if l := s.Endpoints[1].Locality; l != (Locality{Region: "r1", Zone: "z1"}) || s.Endpoints[1].Source != SourceKubernetes {
		t.Errorf("kubernetes endpoint %+v", s.Endpoints[1])
	}
	want := []Conflict{{Service: "orders", Address: "10.0.0.1:8080", Kept: "consul/orders-1", Dropped: "kubernetes/shop/10.0.0.1:8080"}}
	if !reflect.DeepEqual(m.Conflicts, want) {
		t.Errorf("conflicts %+v; want %+v", m.Conflicts, want)
	}

	// A critical VM loses to a ready pod.
	vm.Check = CheckCritical
	m = Merge([]View{{Instances: []Instance{vm}}, {Instances: []Instance{pod}}}, MergeOptions{})
	if ep := m.Service("orders").Endpoints; len(ep) != 1 || ep[0].Source != SourceKubernetes || ep[0].Identity != "ns/shop/svc/orders" {
		t.Errorf("endpoints %+v; want the healthy pod", ep)
	}
	if len(m.Conflicts) != 1 || m.Conflicts[0].Kept != "kubernetes/shop/10.0.0.1:8080" {
		t.Errorf("conflicts %+v", m.Conflicts)
	}
	// Draining from the source.
	pod.Draining = true
	m = Merge([]View{{Instances: []Instance{pod}}}, MergeOptions{})
	if h := m.Service("orders").Endpoints[0].Health; h != Draining {
		t.Errorf("draining instance is %s", h)
	}
}
