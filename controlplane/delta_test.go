package controlplane_test

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestDeltaADS: a delta ADS client gets the clusters, then only what
// changes, and a NACK is not answered by a resend.
func TestDeltaADS(t *testing.T) {
	register(t, regOf("ledger-1", "ledger", "127.0.0.71", 15006, "z1"), "passing")
	register(t, regOf("ledger-2", "ledger", "127.0.0.72", 15006, "z1"), "passing")
	p := startPlane(t, "", nil)

	conn, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resps := make(chan *discovery.DeltaDiscoveryResponse, 100)
	go func() {
		defer close(resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			resps <- r
		}
	}()
	recv := func(d time.Duration) *discovery.DeltaDiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-resps:
			if !ok {
				t.Fatal("delta stream closed")
			}
			return r
		case <-time.After(d):
			t.Fatalf("no delta response in %s", d)
		}
		return nil
	}
	send := func(req *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}

	send(&discovery.DeltaDiscoveryRequest{Node: agentNode("vm-delta", "", 0), TypeUrl: resourcev3.ClusterType})
	r := recv(5 * time.Second)
	var names []string
	for _, res := range r.GetResources() {
		names = append(names, res.GetName())
	}
	found := false
	for _, n := range names {
		found = found || n == "ledger"
	}
	if r.GetTypeUrl() != resourcev3.ClusterType || !found {
		t.Fatalf("first delta response %s with %v, want clusters incl. ledger", r.GetTypeUrl(), names)
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: r.GetNonce()})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"ledger"}})
	r = recv(5 * time.Second)
	if r.GetTypeUrl() != resourcev3.EndpointType || len(r.GetResources()) != 1 {
		t.Fatalf("got %s with %d resources, want the ledger load assignment", r.GetTypeUrl(), len(r.GetResources()))
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.GetNonce()})

	setCheck(t, "ledger-2", "critical")
	r = recv(2 * time.Second)
	if r.GetTypeUrl() != resourcev3.EndpointType || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "ledger" {
		t.Fatalf("got %s %v, want only the changed ledger load assignment", r.GetTypeUrl(), r.GetResources())
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if h, err := endpointHealth(cla, "127.0.0.72", 15006); err != nil || h != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("ledger-2 %v, %v; want UNHEALTHY", h, err)
	}
	// Reject it: no resend follows.
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "rejected by test"}})
	select {
	case r := <-resps:
		t.Fatalf("resent after NACK: %s %v", r.GetTypeUrl(), r.GetResources())
	case <-time.After(time.Second):
	}
	if err := metricAbove(p.adminAddr, `mesh_xds_nacks_total{type="endpoint"}`, 0); err != nil {
		t.Error(err)
	}
	setCheck(t, "ledger-2", "passing")
	if r := recv(2 * time.Second); r.GetTypeUrl() != resourcev3.EndpointType {
		t.Fatalf("got %s after the next change, want EDS", r.GetTypeUrl())
	}
}
