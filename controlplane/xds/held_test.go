package xds

import (
	"context"
	"slices"
	"sort"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
)

// TestHeldNames: what a node's streams were sent, as mesh inspect shows
// it: a SotW request naming nothing holds every cluster, one naming some
// holds those; a delta stream holds what it was sent, less what it was
// told removed and what it unsubscribed; two streams of a node add up.
func TestHeldNames(t *testing.T) {
	s := New(zerolog.Nop(), nil)
	res := map[string]types.Resource{}
	for _, n := range []string{"local_app", "orders", "shop", "web"} {
		res[n] = &clusterv3.Cluster{Name: n}
	}
	names := func(m map[string]types.Resource) []string {
		var out []string
		for n := range m {
			out = append(out, n)
		}
		sort.Strings(out)
		return out
	}
	held := func(node string) []string { return names(s.heldBy(node)[resourcev3.ClusterType].filter(res)) }
	open := func(k streamKey, node string) {
		s.openStream(context.Background(), k)
		s.streams[k].nodeID = node
	}

	sotw := streamKey{id: 1}
	open(sotw, "a")
	if got := held("a"); len(got) != 0 {
		t.Errorf("before any request: %v", got)
	}
	s.heldSotW(sotw, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if got := held("a"); !slices.Equal(got, []string{"local_app", "orders", "shop", "web"}) {
		t.Errorf("SotW wildcard: %v", got)
	}
	s.heldSotW(sotw, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"shop", "gone"}})
	if got := held("a"); !slices.Equal(got, []string{"shop"}) {
		t.Errorf("SotW by name: %v", got)
	}

	delta := streamKey{delta: true, id: 2}
	open(delta, "b")
	send := func(added []string, removed ...string) {
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: resourcev3.ClusterType, RemovedResources: removed}
		for _, n := range added {
			resp.Resources = append(resp.Resources, &discovery.Resource{Name: n})
		}
		s.heldDeltaResponse(delta, resourcev3.ClusterType, resp)
	}
	send([]string{"local_app", "orders", "shop"})
	send(nil, "shop")
	if got := held("b"); !slices.Equal(got, []string{"local_app", "orders"}) {
		t.Errorf("delta after a removal: %v", got)
	}
	s.heldDeltaRequest(delta, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesUnsubscribe: []string{"orders"}})
	if got := held("b"); !slices.Equal(got, []string{"local_app"}) {
		t.Errorf("delta after an unsubscription: %v", got)
	}

	// A second stream of node b (a SotW one asking for web) adds to it.
	other := streamKey{id: 3}
	open(other, "b")
	s.heldSotW(other, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"web"}})
	if got := held("b"); !slices.Equal(got, []string{"local_app", "web"}) {
		t.Errorf("two streams: %v", got)
	}
	s.closeStream(other)
	if got := held("b"); !slices.Equal(got, []string{"local_app"}) {
		t.Errorf("after the second stream closed: %v", got)
	}
}
