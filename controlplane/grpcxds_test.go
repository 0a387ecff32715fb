package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds"

	"github.com/meshvm/mesh/meshtest"
)

// TestGRPCProxylessClient: gRPC's own xDS client resolves xds:///greeter
// through mesh control, calls the instance registered in Consul, and
// follows an instance being added and the first one removed.
func TestGRPCProxylessClient(t *testing.T) {
	a, b := meshtest.LoopbackHost(21), meshtest.LoopbackHost(22)
	portA := healthServer(t, a, "a")
	portB := healthServer(t, b, "b")
	register(t, consulapi.AgentServiceRegistration{ID: "greeter-a", Name: "greeter", Address: a, Port: portA,
		Meta: map[string]string{"mesh_zone": "z1", "mesh_region": "r1"}}, "passing")

	p := startPlane(t, "", nil)

	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-client-1", "locality": {"region": "r1", "zone": "z1"}}
	}`, p.xdsAddr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///greeter", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	answers := func(who string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "who-" + who})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.GetStatus())
		}
		return nil
	}
	meshtest.Eventually(t, 20*time.Second, func() error { return answers("a") })

	register(t, consulapi.AgentServiceRegistration{ID: "greeter-b", Name: "greeter", Address: b, Port: portB,
		Meta: map[string]string{"mesh_zone": "z2", "mesh_region": "r1"}}, "passing")
	deregister(t, "greeter-a")
	// b's registration and a's removal may reach the client in two
	// pushes; in between, calls alternate between the localities.
	meshtest.Eventually(t, 10*time.Second, func() error {
		for i := 0; i < 10; i++ {
			if err := answers("b"); err != nil {
				return err
			}
		}
		return nil
	})
	// Once a is gone every call lands on b.
	for i := 0; i < 20; i++ {
		if err := answers("b"); err != nil {
			t.Fatalf("call %d after a was removed: %v", i, err)
		}
	}
}
