package controlplane_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// interopServer is the gRPC interop test server on host; every answer
// carries the header "instance: name", so a caller can tell who answered.
func interopServer(t *testing.T, host, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("instance", name))
		return h(ctx, req)
	}))
	testgrpc.RegisterTestServiceServer(g, interop.NewTestServer())
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// trafficServices is control.services for the proxyless traffic test:
// shop's subsets v1 and v2 (by the Consul meta version), testers (x-canary: 1)
// always to v2, the rest split v1/v2 by weights.
func trafficServices(v1, v2 int) map[string]config.ServiceSettings {
	return map[string]config.ServiceSettings{"shop": {
		Subsets: []config.Subset{
			{Name: "v1", Match: map[string]string{"version": "v1"}},
			{Name: "v2", Match: map[string]string{"version": "v2"}},
		},
		Routes: []config.Route{
			{Name: "testers", Headers: []config.HeaderMatch{{Name: "x-canary", Exact: "1"}}, Subset: "v2"},
			{Name: "canary", Split: []config.SplitTarget{{Subset: "v1", Weight: v1}, {Subset: "v2", Weight: v2}}},
		},
	}}
}

// TestGRPCProxylessTraffic: gRPC's own xDS client, served by mesh control,
// follows a service's routes: the header route sends every tester's call
// to v2, the weighted split sends 80/20 (within ±3 points over 2,000
// calls), a reload to 50/50 is followed with no call failing across the
// change, and a reload naming an unknown subset is refused with the
// field path while the 50/50 split keeps being served.
func TestGRPCProxylessTraffic(t *testing.T) {
	h1, h2 := meshtest.LoopbackHost(24), meshtest.LoopbackHost(25)
	register(t, consulapi.AgentServiceRegistration{ID: "shop-1", Name: "shop", Address: h1, Port: interopServer(t, h1, "v1"),
		Meta: map[string]string{"version": "v1", "mesh_zone": "z1", "mesh_region": "r1"}}, "passing")
	register(t, consulapi.AgentServiceRegistration{ID: "shop-2", Name: "shop", Address: h2, Port: interopServer(t, h2, "v2"),
		Meta: map[string]string{"version": "v2", "mesh_zone": "z1", "mesh_region": "r1"}}, "passing")

	var cfg config.Config
	p := startPlane(t, "", func(c *config.Config) { c.Control.Services = trafficServices(80, 20); cfg = *c })
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-traffic-1", "locality": {"region": "r1", "zone": "z1"}}
	}`, p.xdsAddr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///shop", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	call := func(canary bool) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if canary {
			ctx = metadata.AppendToOutgoingContext(ctx, "x-canary", "1")
		}
		var md metadata.MD
		if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Header(&md)); err != nil {
			return "", err
		}
		return strings.Join(md.Get("instance"), ","), nil
	}
	count := func(n int) (map[string]int, error) {
		got := map[string]int{}
		for i := 0; i < n; i++ {
			who, err := call(false)
			if err != nil {
				return nil, fmt.Errorf("call %d: %w", i, err)
			}
			got[who]++
		}
		return got, nil
	}
	// Both subsets are resolved once a tester reaches v2 and the split
	// has reached v1.
	meshtest.Eventually(t, 30*time.Second, func() error {
		if who, err := call(true); err != nil || who != "v2" {
			return fmt.Errorf("tester call: %q, %v", who, err)
		}
		got, err := count(50)
		if err != nil {
			return err
		}
		if got["v1"] == 0 || got["v2"] == 0 {
			return fmt.Errorf("not split yet: %v", got)
		}
		return nil
	})
	for i := 0; i < 200; i++ {
		if who, err := call(true); err != nil || who != "v2" {
			t.Fatalf("tester call %d: answered by %q, err %v; want v2 every time", i, who, err)
		}
	}
	const n = 2000
	share := func(wantV2 float64) {
		t.Helper()
		got, err := count(n)
		if err != nil {
			t.Fatal(err)
		}
		v2 := 100 * float64(got["v2"]) / n
		t.Logf("split over %d calls: %v (v2 %.1f%%, want %.0f%%)", n, got, v2, wantV2)
		if got["v1"]+got["v2"] != n || v2 < wantV2-3 || v2 > wantV2+3 {
			t.Fatalf("split over %d calls: %v (v2 %.1f%%), want v2 %.0f%% ± 3", n, got, v2, wantV2)
		}
	}
	share(20)

	// A reload moves the canary to 50%, while calls keep flowing: none
	// fails across the change.
	stop := make(chan struct{})
	type result struct {
		calls int
		err   error
	}
	during := make(chan result, 1)
	go func() {
		var r result
		for {
			select {
			case <-stop:
				during <- r
				return
			default:
			}
			if _, err := call(false); err != nil && r.err == nil {
				r.err = fmt.Errorf("call %d during the reload: %w", r.calls, err)
			}
			r.calls++
		}
	}()
	next := cfg
	next.Control.Services = trafficServices(50, 50)
	if _, err := p.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 20*time.Second, func() error {
		got, err := count(200)
		if err != nil {
			return err
		}
		if got["v2"] < 70 {
			return fmt.Errorf("still the old split: %v", got)
		}
		return nil
	})
	close(stop)
	if r := <-during; r.err != nil {
		t.Fatal(r.err)
	} else {
		t.Logf("%d calls during the reload, none failed", r.calls)
	}
	share(50)

	// A file naming an unknown subset is refused with its field path; the
	// 50/50 split keeps being served.
	bad := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(bad, []byte(`control:
  services:
    shop:
      subsets:
        - {name: v1, match: {version: v1}}
      routes:
        - split: [{subset: v1, weight: 50}, {subset: v3, weight: 50}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	err = p.ReloadFrom(context.Background(), func() (*config.Config, error) {
		return config.Load(config.Options{File: bad, Role: config.RoleControl})
	})
	if err == nil || !strings.Contains(err.Error(), `control.services.shop.routes[0].split[1].subset`) || !strings.Contains(err.Error(), `unknown subset "v3"`) {
		t.Fatalf("reload of a config with an unknown subset: %v; want the field path and unknown subset \"v3\"", err)
	}
	share(50)
}

// TestGRPCProxylessFaultAndHashing: gRPC's xDS client, served by mesh
// control, injects the route's fault (an abort with a gRPC status to
// 30% of the requests carrying x-fault: on, within ±3 points over 2,000
// calls, none without the header), and follows the ring hash on the
// header x-user: every user's calls land on one instance, and users
// spread over the instances.
func TestGRPCProxylessFaultAndHashing(t *testing.T) {
	names := []string{"a", "b", "c"}
	for i, name := range names {
		h := meshtest.LoopbackHost(26 + i)
		register(t, consulapi.AgentServiceRegistration{ID: "stick-" + name, Name: "stick", Address: h, Port: interopServer(t, h, name),
			Meta: map[string]string{"mesh_zone": "z1", "mesh_region": "r1"}}, "passing")
	}
	p := startPlane(t, "", func(c *config.Config) {
		pol := c.Policies.Default
		pol.LoadBalancer = config.LoadBalancer{Policy: "ring_hash", Hash: config.HashKey{Header: "x-user"}}
		c.Policies.Services = map[string]config.Policy{"stick": pol}
		c.Control.Services = map[string]config.ServiceSettings{"stick": {Routes: []config.Route{{
			Name:    "rehearse",
			Headers: []config.HeaderMatch{{Name: "x-fault", Exact: "on"}},
			Fault:   config.RouteFault{Abort: config.FaultAbort{GRPCStatus: int(codes.ResourceExhausted), Percent: 30}},
		}}}}
	})
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-traffic-2", "locality": {"region": "r1", "zone": "z1"}}
	}`, p.xdsAddr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///stick", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	call := func(kv ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
		var md metadata.MD
		if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Header(&md)); err != nil {
			return "", err
		}
		return strings.Join(md.Get("instance"), ","), nil
	}
	// Every instance is resolved once users reach all three.
	meshtest.Eventually(t, 30*time.Second, func() error {
		seen := map[string]bool{}
		for u := 0; u < 60; u++ {
			who, err := call("x-user", fmt.Sprintf("user-%d", u))
			if err != nil {
				return err
			}
			seen[who] = true
		}
		if len(seen) < 3 {
			return fmt.Errorf("users reach %v only", seen)
		}
		return nil
	})
	for u := 0; u < 30; u++ {
		user := fmt.Sprintf("user-%d", u)
		first, err := call("x-user", user)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			if who, err := call("x-user", user); err != nil || who != first {
				t.Fatalf("%s call %d: answered by %q (err %v), first by %q; want one instance per user", user, i, who, err, first)
			}
		}
	}

	const n = 2000
	aborted := 0
	for i := 0; i < n; i++ {
		_, err := call("x-fault", "on")
		switch status.Code(err) {
		case codes.OK:
		case codes.ResourceExhausted:
			aborted++
		default:
			t.Fatalf("call %d with x-fault: %v", i, err)
		}
	}
	share := 100 * float64(aborted) / n
	t.Logf("fault: %d of %d calls aborted (%.1f%%, want 30%%)", aborted, n, share)
	if share < 27 || share > 33 {
		t.Fatalf("fault: %.1f%% of %d calls aborted, want 30 ± 3", share, n)
	}
	for i := 0; i < 200; i++ {
		if _, err := call(); err != nil {
			t.Fatalf("call %d without x-fault: %v; the fault must not apply", i, err)
		}
	}
}
