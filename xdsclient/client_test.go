package xdsclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/xdsclient"
)

// controlPlane is a real go-control-plane ADS server on loopback.
type controlPlane struct {
	addr  string
	cache cache.SnapshotCache
	srv   *grpc.Server

	mu    sync.Mutex
	nacks []string
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{cache: cache.NewSnapshotCache(true, cache.IDHash{}, nil)}
	cb := server.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		if d := req.GetErrorDetail(); d != nil {
			cp.mu.Lock()
			cp.nacks = append(cp.nacks, d.GetMessage())
			cp.mu.Unlock()
		}
		return nil
	}}
	cp.srv = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, server.NewServer(context.Background(), cp.cache, cb))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = ln.Addr().String()
	go func() { _ = cp.srv.Serve(ln) }()
	t.Cleanup(cp.srv.Stop)
	return cp
}

func (cp *controlPlane) Nacks() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.nacks...)
}

// snapshot has one service: cluster (EDS), its endpoints, a listener whose
// HCM names a route config.
func snapshot(t *testing.T, version string, endpoints ...string) *cache.Snapshot {
	t.Helper()
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix:     "outbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "outbound", ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	lis := &listenerv3.Listener{
		Name:         "outbound",
		Address:      &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15001}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
	rc := &routev3.RouteConfiguration{Name: "outbound", VirtualHosts: []*routev3.VirtualHost{{
		Name: "orders", Domains: []string{"orders"},
		Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "orders"}}}}},
	}}}
	cl := &clusterv3.Cluster{
		Name:                 "orders",
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
	}
	var lbs []*endpointv3.LbEndpoint
	for _, ep := range endpoints {
		host, port, _ := net.SplitHostPort(ep)
		var p uint32
		fmt.Sscan(port, &p)
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "orders", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
	snap, err := cache.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ClusterType:  {cl},
		resource.EndpointType: {cla},
		resource.ListenerType: {lis},
		resource.RouteType:    {rc},
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// recorder keeps what Apply was given and can be told to reject.
type recorder struct {
	mu     sync.Mutex
	last   xdsclient.Resources
	reject func(xdsclient.Resources) error
}

func (r *recorder) apply(res xdsclient.Resources) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reject != nil {
		if err := r.reject(res); err != nil {
			return err
		}
	}
	r.last = res
	return nil
}

func (r *recorder) endpoints() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, le := range r.last.Endpoints["orders"].GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}

func (r *recorder) complete() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.last.Listeners) != 1 || len(r.last.Routes) != 1 || len(r.last.Clusters) != 1 || len(r.last.Endpoints) != 1 {
		return fmt.Errorf("incomplete set: %d listeners, %d routes, %d clusters, %d endpoints",
			len(r.last.Listeners), len(r.last.Routes), len(r.last.Clusters), len(r.last.Endpoints))
	}
	return nil
}

func runClient(t *testing.T, rec *recorder, servers ...string) *xdsclient.Client {
	t.Helper()
	c, err := xdsclient.New(xdsclient.Options{
		Servers: servers, Node: &corev3.Node{Id: "node-1"}, Apply: rec.apply,
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

func TestFullSetThenUpdates(t *testing.T) {
	cp := startControlPlane(t)
	if err := cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006")); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c := runClient(t, rec, cp.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)
	if got := rec.endpoints(); len(got) != 1 || got[0] != "127.0.0.2:15006" {
		t.Fatalf("endpoints %v", got)
	}
	if err := cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v2", "127.0.0.2:15006", "127.0.0.3:15006")); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		if n := len(rec.endpoints()); n != 2 {
			return fmt.Errorf("%d endpoints, want 2", n)
		}
		return nil
	})
	if s := c.State(); !s.Connected || s.Acks == 0 || s.Nacks != 0 {
		t.Errorf("state %+v", s)
	}
}

func TestRejectedUpdateIsNackedWithReasonAndOldSetKept(t *testing.T) {
	cp := startControlPlane(t)
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	rec := &recorder{}
	runClient(t, rec, cp.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)

	rec.mu.Lock()
	rec.reject = func(r xdsclient.Resources) error {
		if len(r.Endpoints["orders"].GetEndpoints()[0].GetLbEndpoints()) > 1 {
			return errors.New("cluster orders: endpoint 127.0.0.9:1 is not usable")
		}
		return nil
	}
	rec.mu.Unlock()
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v2", "127.0.0.2:15006", "127.0.0.9:1"))
	meshtest.Eventually(t, 5*time.Second, func() error {
		for _, n := range cp.Nacks() {
			if n == "cluster orders: endpoint 127.0.0.9:1 is not usable" {
				return nil
			}
		}
		return fmt.Errorf("no NACK with the reason at the server: %v", cp.Nacks())
	})
	if got := rec.endpoints(); len(got) != 1 {
		t.Errorf("rejected set applied: %v", got)
	}
}

func TestFailsOverToTheNextControlPlane(t *testing.T) {
	first, second := startControlPlane(t), startControlPlane(t)
	_ = first.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	_ = second.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v9", "127.0.0.5:15006"))
	rec := &recorder{}
	c := runClient(t, rec, first.addr, second.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)
	first.srv.Stop()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if got := rec.endpoints(); len(got) != 1 || got[0] != "127.0.0.5:15006" {
			return fmt.Errorf("endpoints %v, want the second control plane's", got)
		}
		return nil
	})
	if s := c.State(); s.Server != second.addr {
		t.Errorf("connected to %s, want %s", s.Server, second.addr)
	}
}

func TestCacheRoundTrip(t *testing.T) {
	cp := startControlPlane(t)
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	rec := &recorder{}
	runClient(t, rec, cp.addr)
	meshtest.Eventually(t, 5*time.Second, rec.complete)
	path := filepath.Join(t.TempDir(), "state", "xds.json")
	rec.mu.Lock()
	saved := rec.last
	rec.mu.Unlock()
	if err := xdsclient.SaveCache(path, saved); err != nil {
		t.Fatal(err)
	}
	loaded, err := xdsclient.LoadCache(path)
	if err != nil {
		t.Fatal(err)
	}
	back := &recorder{last: loaded}
	if err := back.complete(); err != nil {
		t.Fatal(err)
	}
	if got := back.endpoints(); len(got) != 1 || got[0] != "127.0.0.2:15006" {
		t.Errorf("endpoints after reload %v", got)
	}
}
