package xds_test

import (
	"context"
	"reflect"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
)

// TestUpdateSetMatchesNewSet: a set updated entry by entry has the
// version a set hashed from scratch has, whatever the order of changes.
func TestUpdateSetMatchesNewSet(t *testing.T) {
	cla := func(name string) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name}
	}
	h := xds.NewHasher()
	in := translate.Set{"a": cla("a"), "b": cla("b"), "c": cla("c")}
	prev, err := h.NewSet(in)
	if err != nil {
		t.Fatal(err)
	}
	next := translate.Set{"a": cla("a"), "c": cla("c2"), "d": cla("d")}
	got, err := h.UpdateSet(prev, next, []string{"d", "b", "c", "x"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := xds.NewHasher().NewSet(next)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != want.Version || got.Len() != 3 {
		t.Fatalf("updated set: version %s, %d resources; from scratch: %s, 3", got.Version, got.Len(), want.Version)
	}
	if prev.Len() != 3 || prev.Resources()["b"] == nil {
		t.Fatal("the previous set was modified")
	}
	back, err := h.UpdateSet(got, in, []string{"b", "c", "d"})
	if err != nil {
		t.Fatal(err)
	}
	if back.Version != prev.Version {
		t.Fatalf("back to the first content: version %s, want %s", back.Version, prev.Version)
	}
}

// TestIncrementalUpdateMatchesFull: a server updated with incremental
// translations (one service's health, a service added, then removed)
// holds, for an agent, the versions of a server given full translations
// of the same models.
func TestIncrementalUpdateMatchesFull(t *testing.T) {
	ctx := context.Background()
	opts := model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}}
	view := catalog(50, 3)
	inc, tr := xds.New(zerolog.Nop(), nil), translate.NewTranslator()
	node := model.Node{ID: "agent-1", Service: "svc-00001", AppPort: 8080}
	inc.AddNode(node)
	var prev *model.Model
	base := view.Instances
	for step, change := range []func(){
		func() {},
		func() { view.Instances[4].Check = model.CheckCritical },
		func() {
			view.Instances = append(base[:len(base):len(base)], model.Instance{Service: "svc-new", ID: "svc-new-0", Node: "vm-0",
				Address: "10.9.9.9", Port: 15006, Check: model.CheckPassing, Weight: 1, Meta: map[string]string{"app_port": "8080"}})
		},
		func() { view.Instances = base },
	} {
		change()
		var m model.Model
		if prev == nil {
			m = model.Merge([]model.View{view}, opts)
		} else {
			m = model.MergeChanged(prev, []model.View{view}, opts, map[string]bool{"svc-00001": true, "svc-new": true})
		}
		mesh, err := tr.Translate(&m, opts.Policies)
		if err != nil {
			t.Fatal(err)
		}
		if step > 0 && mesh.Changed() == nil {
			t.Fatalf("step %d: the translation was not incremental", step)
		}
		if err := inc.Update(ctx, mesh); err != nil {
			t.Fatal(err)
		}
		prev = &m
		full := xds.New(zerolog.Nop(), nil)
		fm := model.Merge([]model.View{view}, opts)
		fmesh, err := translate.Translate(&fm, opts.Policies)
		if err != nil {
			t.Fatal(err)
		}
		if err := full.Update(ctx, fmesh); err != nil {
			t.Fatal(err)
		}
		full.AddNode(node)
		got, _, _ := inc.NodeResources(node.ID)
		want, _, _ := full.NodeResources(node.ID)
		if !reflect.DeepEqual(got.Versions, want.Versions) {
			t.Fatalf("step %d: incremental versions %v, full %v", step, got.Versions, want.Versions)
		}
	}
}
