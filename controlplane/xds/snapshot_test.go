package xds_test

import (
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

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
