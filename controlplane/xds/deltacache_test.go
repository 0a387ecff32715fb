package xds

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/controlplane/translate"
)

// TestDeltaCacheAnswersAsSnapshotCache: for the same snapshots and
// subscriptions, the delta cache sends what go-control-plane's snapshot
// cache sends (resources, versions, removals, when it answers at all),
// on a first request, on a reconnect with initial versions, for a
// wildcard, and on a push.
func TestDeltaCacheAnswersAsSnapshotCache(t *testing.T) {
	h := NewHasher()
	set := func(names ...string) *Set {
		in := translate.Set{}
		for _, n := range names {
			name, lb, _ := strings.Cut(n, ":")
			c := &clusterv3.Cluster{Name: name}
			if lb != "" {
				c.LbPolicy = clusterv3.Cluster_RANDOM
			}
			in[name] = c
		}
		s, err := h.NewSet(in)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	snapshot := func(shared, own *Set) *Snapshot {
		empty := &Layer{base: emptySet}
		return NewSnapshot(NewLayer(shared, own), empty, empty, empty)
	}
	shared := set("a", "b", "c", "d")
	own := set("local_app")
	snap := snapshot(shared, own)
	version := func(name string) string {
		_, v, _ := snap.layers[0].get(name)
		return v
	}
	type request struct {
		name      string
		subscribe []string
		initial   map[string]string
		nonce     string
		// wantNone: neither cache answers at once.
		wantNone bool
	}
	for _, r := range []request{
		{name: "first request by name", subscribe: []string{"a", "b", "local_app", "missing"}},
		{name: "reconnect: one current, one stale, one gone", subscribe: []string{"a", "b", "gone"},
			initial: map[string]string{"a": version("a"), "b": "old", "gone": "v"}},
		{name: "reconnect holding everything", subscribe: []string{"a", "local_app"},
			initial: map[string]string{"a": version("a"), "local_app": version("local_app")}, wantNone: true},
		{name: "nothing that exists", subscribe: []string{"missing"}, wantNone: true},
		{name: "wildcard, first request", subscribe: []string{"*"}},
		{name: "wildcard holding a stale and a gone one", subscribe: []string{"*"}, nonce: "1",
			initial: map[string]string{"a": version("a"), "b": version("b"), "c": "old", "d": version("d"), "gone": "v"}},
	} {
		t.Run(r.name, func(t *testing.T) {
			theirs := cache.NewSnapshotCache(false, cache.IDHash{}, nil)
			if err := theirs.SetSnapshot(context.Background(), "n1", snap); err != nil {
				t.Fatal(err)
			}
			ours := newDeltaCache()
			if err := ours.set("n1", snap, resourcev3.ClusterType); err != nil {
				t.Fatal(err)
			}
			req := &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n1"}, TypeUrl: resourcev3.ClusterType,
				ResourceNamesSubscribe: r.subscribe, InitialResourceVersions: r.initial, ResponseNonce: r.nonce}
			got := [2]chan cache.DeltaResponse{make(chan cache.DeltaResponse, 1), make(chan cache.DeltaResponse, 1)}
			subs := [2]stream.Subscription{}
			for i, c := range []cache.ConfigWatcher{theirs, ours} {
				subs[i] = stream.NewDeltaSubscription(r.subscribe, nil, r.initial, false)
				if _, err := c.CreateDeltaWatch(req, subs[i], got[i]); err != nil {
					t.Fatal(err)
				}
			}
			want, have := take(got[0]), take(got[1])
			if r.wantNone && want != nil {
				t.Fatalf("go-control-plane answered %s", describe(t, want))
			}
			if d, w := describe(t, have), describe(t, want); d != w {
				t.Fatalf("delta cache sent %s\ngo-control-plane sent %s", d, w)
			}
			if r.wantNone || r.nonce != "" {
				return
			}
			// The ACK, then a push that changes b and drops c.
			next := snapshot(set("a", "b:random", "d"), own)
			for i, c := range []cache.ConfigWatcher{theirs, ours} {
				subs[i].SetReturnedResources([]cache.DeltaResponse{want, have}[i].GetReturnedResources())
				req := proto.Clone(req).(*discovery.DeltaDiscoveryRequest)
				req.ResponseNonce, req.ResourceNamesSubscribe, req.InitialResourceVersions = "1", nil, nil
				if _, err := c.CreateDeltaWatch(req, subs[i], got[i]); err != nil {
					t.Fatal(err)
				}
				if a := take(got[i]); a != nil {
					t.Fatalf("cache %d answered an ACK with %s", i, describe(t, a))
				}
			}
			if err := theirs.SetSnapshot(context.Background(), "n1", next); err != nil {
				t.Fatal(err)
			}
			if err := ours.set("n1", next, resourcev3.ClusterType); err != nil {
				t.Fatal(err)
			}
			want, have = take(got[0]), take(got[1])
			if d, w := describe(t, have), describe(t, want); d != w {
				t.Fatalf("push: delta cache sent %s\ngo-control-plane sent %s", d, w)
			}
		})
	}
}

func take(c chan cache.DeltaResponse) cache.DeltaResponse {
	select {
	case r := <-c:
		return r
	default:
		return nil
	}
}

// describe prints what a response puts on the wire, sorted, and the
// versions the stream holds after it.
func describe(t *testing.T, r cache.DeltaResponse) string {
	t.Helper()
	if r == nil {
		return "nothing"
	}
	m, err := r.GetDeltaDiscoveryResponse()
	if err != nil {
		t.Fatal(err)
	}
	var res []string
	for _, x := range m.GetResources() {
		c := &clusterv3.Cluster{}
		if err := x.GetResource().UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		res = append(res, fmt.Sprintf("%s@%s(%s)", x.GetName(), x.GetVersion(), c.GetLbPolicy()))
	}
	slices.Sort(res)
	removed := slices.Sorted(slices.Values(m.GetRemovedResources()))
	var held []string
	for n, v := range r.GetReturnedResources() {
		held = append(held, n+"@"+v)
	}
	slices.Sort(held)
	return fmt.Sprintf("version %q resources %v removed %v, holding %v", m.GetSystemVersionInfo(), res, removed, held)
}
