package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// adsClient is a minimal state-of-the-world ADS client, as Envoy drives
// it: one stream, explicit ACKs and NACKs.
type adsClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discovery.DiscoveryResponse
	sent   bool
	// acked is the last ACKed response per type.
	acked map[string]*discovery.DiscoveryResponse
	// close ends the stream and waits for its reader.
	close func()
}

func agentNode(id, service string, appPort int) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"service": service, "app_port": float64(appPort)})
	return &corev3.Node{Id: id, Metadata: md, UserAgentName: "mesh-test", Locality: &corev3.Locality{Region: "r1", Zone: "z1"}}
}

func dialADS(t *testing.T, addr string, node *corev3.Node) *adsClient {
	t.Helper()
	return dialADSContext(t, context.Background(), addr, node)
}

// dialADSContext opens an ADS stream that ends with ctx, with close, or
// when the test ends.
func dialADSContext(t *testing.T, ctx context.Context, addr string, node *corev3.Node) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		conn.Close()
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: stream, node: node, resps: make(chan *discovery.DiscoveryResponse, 100)}
	done := make(chan struct{})
	c.close = sync.OnceFunc(func() { cancel(); conn.Close(); <-done })
	t.Cleanup(c.close)
	go func() {
		defer close(done)
		defer close(c.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case c.resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return c
}

func (c *adsClient) send(typeURL string, names []string, version, nonce string, nack error) {
	c.t.Helper()
	req := &discovery.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if !c.sent {
		req.Node = c.node
		c.sent = true
	}
	if nack != nil {
		req.ErrorDetail = &status.Status{Code: 3, Message: nack.Error()}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send %s: %v", typeURL, err)
	}
}

// recv waits for the next response.
func (c *adsClient) recv(timeout time.Duration) *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("ads stream closed")
		}
		return r
	case <-time.After(timeout):
		c.t.Fatalf("no ADS response in %s", timeout)
	}
	return nil
}

// quiet asserts no response arrives for d.
func (c *adsClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response %s version %s", r.GetTypeUrl(), r.GetVersionInfo())
	case <-time.After(d):
	}
}

// subscribe requests a type and returns the response, ACKing it.
func (c *adsClient) subscribe(typeURL string, names []string) *discovery.DiscoveryResponse {
	c.t.Helper()
	c.send(typeURL, names, "", "", nil)
	r := c.recv(5 * time.Second)
	if r.GetTypeUrl() != typeURL {
		c.t.Fatalf("asked for %s, got %s", typeURL, r.GetTypeUrl())
	}
	c.ack(r, names)
	return r
}

func (c *adsClient) ack(r *discovery.DiscoveryResponse, names []string) {
	c.send(r.GetTypeUrl(), names, r.GetVersionInfo(), r.GetNonce(), nil)
	if c.acked == nil {
		c.acked = map[string]*discovery.DiscoveryResponse{}
	}
	c.acked[r.GetTypeUrl()] = r
}

// resubscribe changes the names of a type's subscription, as Envoy does:
// with the last ACKed version and nonce.
func (c *adsClient) resubscribe(typeURL string, names []string) {
	last := c.acked[typeURL]
	c.send(typeURL, names, last.GetVersionInfo(), last.GetNonce(), nil)
}

func decode[T proto.Message](t *testing.T, r *discovery.DiscoveryResponse, mk func() T) map[string]T {
	t.Helper()
	out := map[string]T{}
	for _, a := range r.GetResources() {
		m := mk()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatalf("decode %s: %v", a.GetTypeUrl(), err)
		}
		var name string
		switch v := any(m).(type) {
		case *clusterv3.Cluster:
			name = v.GetName()
		case *endpointv3.ClusterLoadAssignment:
			name = v.GetClusterName()
		case *listenerv3.Listener:
			name = v.GetName()
		case *routev3.RouteConfiguration:
			name = v.GetName()
		}
		out[name] = m
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// endpointHealth returns the health of the endpoint at host:port in a
// load assignment.
func endpointHealth(cla *endpointv3.ClusterLoadAssignment, host string, port int) (corev3.HealthStatus, error) {
	for _, l := range cla.GetEndpoints() {
		for _, ep := range l.GetLbEndpoints() {
			sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() == host && int(sa.GetPortValue()) == port {
				return ep.GetHealthStatus(), nil
			}
		}
	}
	return 0, fmt.Errorf("no endpoint %s:%d in %s", host, port, cla.GetClusterName())
}

var errBad = errors.New("rejected by test")

// TestADSFullResourceSet drives an agent-like ADS client through CDS, EDS,
// LDS and RDS, then checks that a check going critical reaches it within
// a second, that a new service is pushed CDS first, and that an unchanged
// Consul view pushes nothing.
func TestADSFullResourceSet(t *testing.T) {
	register(t, regOf("orders-1", "orders", "127.0.0.31", 15006, "z1"), "passing")
	register(t, regOf("orders-2", "orders", "127.0.0.32", 15006, "z2"), "passing")
	register(t, regOf("payments-1", "payments", "127.0.0.33", 15006, "z1"), "warning")
	p := startPlane(t, "", nil)

	c := dialADS(t, p.xdsAddr, agentNode("vm-orders-1", "orders", 8080))
	cds := decode(t, c.subscribe(resourcev3.ClusterType, nil), func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
	if got, want := keys(cds), []string{"local_app", "orders", "payments"}; !slices.Equal(got, want) {
		t.Fatalf("clusters %v, want %v", got, want)
	}
	edsNames := []string{"orders", "payments"}
	eds := decode(t, c.subscribe(resourcev3.EndpointType, edsNames), func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
	if n := len(eds["orders"].GetEndpoints()); n != 2 {
		t.Fatalf("orders has %d localities, want 2 (z1, z2)", n)
	}
	if h, err := endpointHealth(eds["payments"], "127.0.0.33", 15006); err != nil || h != corev3.HealthStatus_HEALTHY {
		t.Fatalf("payments (warning in Consul) health %v, %v; want HEALTHY", h, err)
	}
	lds := decode(t, c.subscribe(resourcev3.ListenerType, nil), func() *listenerv3.Listener { return &listenerv3.Listener{} })
	if got, want := keys(lds), []string{"mesh_inbound", "mesh_outbound"}; !slices.Equal(got, want) {
		t.Fatalf("listeners %v, want %v", got, want)
	}
	rds := decode(t, c.subscribe(resourcev3.RouteType, []string{"mesh_outbound"}), func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
	var hosts []string
	for _, vh := range rds["mesh_outbound"].GetVirtualHosts() {
		hosts = append(hosts, vh.GetName())
	}
	if want := []string{"orders", "payments"}; !slices.Equal(hosts, want) {
		t.Fatalf("virtual hosts %v, want %v", hosts, want)
	}
	c.quiet(300 * time.Millisecond)

	t.Run("check going critical reaches the client within 1s", func(t *testing.T) {
		start := time.Now()
		setCheck(t, "orders-2", "critical")
		r := c.recv(time.Second)
		took := time.Since(start)
		if r.GetTypeUrl() != resourcev3.EndpointType {
			t.Fatalf("got %s, want an EDS push", r.GetTypeUrl())
		}
		c.ack(r, edsNames)
		eds := decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
		if h, err := endpointHealth(eds["orders"], "127.0.0.32", 15006); err != nil || h != corev3.HealthStatus_UNHEALTHY {
			t.Fatalf("orders-2 health %v, %v; want UNHEALTHY", h, err)
		}
		t.Logf("critical check reached the ADS client in %s", took)
		c.quiet(300 * time.Millisecond)
	})

	t.Run("unchanged view pushes nothing", func(t *testing.T) {
		// New check output, same state: Consul's index moves, the view
		// does not.
		if err := testConsul.Client.Agent().UpdateTTL("ttl-orders-1", "other output", "passing"); err != nil {
			t.Fatal(err)
		}
		c.quiet(500 * time.Millisecond)
	})

	t.Run("new service is pushed CDS before its EDS and RDS", func(t *testing.T) {
		register(t, regOf("stock-1", "stock", "127.0.0.34", 15006, "z1"), "passing")
		// As Envoy does, the client asks for the new cluster's load
		// assignment once CDS names it; the server sends only what
		// changed (state of the world allows partial EDS responses).
		var order []string
		names := edsNames
		gotStock := false
		for len(order) < 3 {
			r := c.recv(3 * time.Second)
			order = append(order, r.GetTypeUrl())
			switch r.GetTypeUrl() {
			case resourcev3.ClusterType:
				c.ack(r, nil)
				names = []string{"orders", "payments", "stock"}
				c.resubscribe(resourcev3.EndpointType, names)
			case resourcev3.EndpointType:
				c.ack(r, names)
				eds := decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
				if got := keys(eds); !slices.Equal(got, []string{"stock"}) {
					t.Fatalf("EDS push holds %v, want only the new stock", got)
				}
				gotStock = true
			case resourcev3.RouteType:
				c.ack(r, []string{"mesh_outbound"})
			}
		}
		if order[0] != resourcev3.ClusterType || !gotStock || !slices.Contains(order, resourcev3.RouteType) {
			t.Fatalf("push order %v, want CDS first, then EDS (stock) and RDS", order)
		}
		edsNames = names
	})

	t.Run("a NACK is not answered by a resend loop", func(t *testing.T) {
		register(t, regOf("billing-1", "billing", "127.0.0.35", 15006, "z1"), "passing")
		r := c.recv(3 * time.Second)
		if r.GetTypeUrl() != resourcev3.ClusterType {
			t.Fatalf("got %s first, want CDS", r.GetTypeUrl())
		}
		// Reject the clusters; keep the rest flowing.
		c.send(resourcev3.ClusterType, nil, "", r.GetNonce(), errBad)
		deadline := time.After(time.Second)
		for {
			select {
			case r2, ok := <-c.resps:
				if !ok {
					t.Fatal("stream closed")
				}
				if r2.GetTypeUrl() == resourcev3.ClusterType {
					t.Fatalf("rejected clusters resent (version %s)", r2.GetVersionInfo())
				}
				names := edsNames
				if r2.GetTypeUrl() == resourcev3.RouteType {
					names = []string{"mesh_outbound"}
				}
				c.ack(r2, names)
				continue
			case <-deadline:
			}
			break
		}
		// A real change is still delivered after the NACK.
		deregister(t, "billing-1")
		r3 := c.recv(3 * time.Second)
		if r3.GetTypeUrl() != resourcev3.ClusterType {
			t.Fatalf("got %s, want the new clusters after a change", r3.GetTypeUrl())
		}
		if got := keys(decode(t, r3, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })); slices.Contains(got, "billing") {
			t.Fatalf("clusters %v still hold billing", got)
		}
	})
}

func regOf(id, name, addr string, port int, zone string) consulRegistration {
	return consulRegistration{ID: id, Name: name, Address: addr, Port: port,
		Meta: map[string]string{"app_port": "8080", "mesh_version": "test", "mesh_zone": zone, "mesh_region": "r1"}}
}
