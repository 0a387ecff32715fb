package xdsclient_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/xdsclient"
)

// received counts the resources delta responses carried, by type.
type received struct {
	mu      sync.Mutex
	updated map[string]int
	removed map[string]int
}

func (r *received) add(typeURL string, updated, removed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updated[typeURL] += updated
	r.removed[typeURL] += removed
}

func (r *received) reset() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.updated
	r.updated, r.removed = map[string]int{}, map[string]int{}
	return out
}

func runDeltaClient(t *testing.T, rec *recorder, got *received, servers ...string) *xdsclient.Client {
	t.Helper()
	c, err := xdsclient.New(xdsclient.Options{
		Servers: servers, Node: &corev3.Node{Id: "node-1"}, Apply: rec.apply,
		Delta: true, Listeners: []string{"outbound"}, Clusters: []string{"orders"}, Routes: []string{"outbound"},
		OnResources: got.add,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Log: zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// TestDeltaSubscribesByNameAndGetsOnlyChanges: a delta client gets the
// complete set it subscribed to, then one load assignment when only the
// endpoints change, and drops a cluster (and its endpoints) it
// unsubscribes from.
func TestDeltaSubscribesByNameAndGetsOnlyChanges(t *testing.T) {
	cp := startControlPlane(t)
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	rec, got := &recorder{}, &received{updated: map[string]int{}, removed: map[string]int{}}
	c := runDeltaClient(t, rec, got, cp.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)
	if first := got.reset(); first[resource.ClusterType] != 1 || first[resource.EndpointType] != 1 {
		t.Fatalf("first sync carried %v, want one cluster and one load assignment", first)
	}

	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v2", "127.0.0.2:15006", "127.0.0.3:15006"))
	meshtest.Eventually(t, 5*time.Second, func() error {
		if n := len(rec.endpoints()); n != 2 {
			return fmt.Errorf("%d endpoints, want 2", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // let anything else arrive
	if next := got.reset(); next[resource.EndpointType] != 1 || next[resource.ClusterType] != 0 || next[resource.ListenerType] != 0 || next[resource.RouteType] != 0 {
		t.Fatalf("an endpoint change carried %v, want one load assignment only", next)
	}
	if s := c.State(); !s.Connected || s.Nacks != 0 {
		t.Errorf("state %+v", s)
	}

	c.Unsubscribe(resource.ClusterType, "orders")
	meshtest.Eventually(t, 5*time.Second, func() error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.last.Clusters) != 0 || len(rec.last.Endpoints) != 0 {
			return fmt.Errorf("still holding %d clusters and %d load assignments", len(rec.last.Clusters), len(rec.last.Endpoints))
		}
		return nil
	})
	c.Subscribe(resource.ClusterType, "orders")
	meshtest.Eventually(t, 5*time.Second, rec.complete)
}

// TestDeltaFailoverResendsOnlyWhatChanged: after failing over to another
// control plane, the client resumes from the versions it holds and
// receives only the resource that differs there.
func TestDeltaFailoverResendsOnlyWhatChanged(t *testing.T) {
	first, second := startControlPlane(t), startControlPlane(t)
	_ = first.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	_ = second.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006", "127.0.0.5:15006"))
	rec, got := &recorder{}, &received{updated: map[string]int{}, removed: map[string]int{}}
	runDeltaClient(t, rec, got, first.addr, second.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)
	got.reset()
	first.srv.Stop()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if n := len(rec.endpoints()); n != 2 {
			return fmt.Errorf("%d endpoints, want the second control plane's 2", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if after := got.reset(); after[resource.EndpointType] != 1 || after[resource.ClusterType]+after[resource.ListenerType]+after[resource.RouteType] != 0 {
		t.Fatalf("failover carried %v, want only the changed load assignment", after)
	}
	if err := rec.complete(); err != nil {
		t.Fatal(err)
	}
}
