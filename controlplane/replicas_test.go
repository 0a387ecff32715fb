package controlplane_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/xdsclient"
)

// replicaCatalog registers services x 3 instances with tags, meta and
// checks in every state, so map order or per-process state anywhere in
// the pipeline would show as a difference between replicas.
func replicaCatalog(t *testing.T, prefix string, services int) {
	t.Helper()
	checks := []string{"passing", "warning", "critical"}
	for s := 0; s < services; s++ {
		name := fmt.Sprintf("%s-%02d", prefix, s)
		for i := 0; i < 3; i++ {
			r := regOf(fmt.Sprintf("%s-%d", name, i), name, fmt.Sprintf("127.0.%d.%d", 100+s, i+1), 15006, fmt.Sprintf("z%d", i%2))
			r.Tags = []string{"v" + fmt.Sprint(i), "canary", "blue", fmt.Sprintf("t%d", s%5)}
			r.Meta["owner"] = "team-" + fmt.Sprint(s%3)
			r.Meta["build"] = fmt.Sprintf("%d%d", s, i)
			register(t, r, checks[(s+i)%3])
		}
	}
}

// waitServices waits until the plane's model holds every one of names.
func waitServices(t *testing.T, p *plane, prefix string, n int) {
	t.Helper()
	meshtest.Eventually(t, 20*time.Second, func() error {
		m := p.Model()
		if m == nil {
			return errors.New("no model yet")
		}
		got := 0
		for _, s := range m.Services {
			if strings.HasPrefix(s.Name, prefix+"-") && len(s.Endpoints) == 3 {
				got++
			}
		}
		if got != n {
			return fmt.Errorf("%d of %d services with 3 endpoints", got, n)
		}
		return nil
	})
}

// waitHealth waits until the plane's model has endpoint id of service in
// health h.
func waitHealth(t *testing.T, p *plane, service, id string, h model.Health) {
	t.Helper()
	meshtest.Eventually(t, 10*time.Second, func() error {
		if m := p.Model(); m != nil {
			for _, s := range m.Services {
				for _, ep := range s.Endpoints {
					if s.Name == service && ep.ID == id && ep.Health == h {
						return nil
					}
				}
			}
		}
		return fmt.Errorf("%s is not %s yet", id, h)
	})
}

// typeView is what a client holds of one type: the version it was sent
// and each resource's bytes as they came on the wire (and, on delta
// streams, each resource's version).
type typeView struct {
	version   string
	resources map[string][]byte
	versions  map[string]string
}

// sotwView syncs a state-of-the-world ADS stream as an agent does (CDS
// and LDS wildcard, then EDS and RDS for the names they give) and returns
// what it holds per type.
func sotwView(t *testing.T, addr, nodeID string) map[string]typeView {
	t.Helper()
	c := dialADS(t, addr, agentNode(nodeID, "rep-00", 8080))
	defer c.close()
	out := map[string]typeView{}
	keep := func(r *discovery.DiscoveryResponse) []string {
		v := typeView{version: r.GetVersionInfo(), resources: map[string][]byte{}}
		var next []string
		for _, a := range r.GetResources() {
			m, name, err := xdsclient.Decode(a)
			if err != nil {
				t.Fatal(err)
			}
			v.resources[name] = a.GetValue()
			switch m := m.(type) {
			case *clusterv3.Cluster:
				if m.GetType() == clusterv3.Cluster_EDS {
					next = append(next, name)
				}
			case *listenerv3.Listener:
				for _, h := range xdsclient.HTTPConnectionManagers(m) {
					if n := h.GetRds().GetRouteConfigName(); n != "" {
						next = append(next, n)
					}
				}
			}
		}
		out[r.GetTypeUrl()] = v
		slices.Sort(next)
		return next
	}
	eds := keep(c.subscribe(resourcev3.ClusterType, nil))
	keep(c.subscribe(resourcev3.EndpointType, eds))
	rds := keep(c.subscribe(resourcev3.ListenerType, nil))
	keep(c.subscribe(resourcev3.RouteType, rds))
	return out
}

// deltaView does the same over a delta ADS stream.
func deltaView(t *testing.T, addr, nodeID string) map[string]typeView {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]typeView{}
	first := true
	sync := func(typeURL string, names []string) []string {
		t.Helper()
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names}
		if first {
			req.Node, first = agentNode(nodeID, "rep-00", 8080), false
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("delta %s: %v", typeURL, err)
		}
		if r.GetTypeUrl() != typeURL {
			t.Fatalf("asked for %s, got %s", typeURL, r.GetTypeUrl())
		}
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		v := typeView{version: r.GetSystemVersionInfo(), resources: map[string][]byte{}, versions: map[string]string{}}
		var next []string
		for _, res := range r.GetResources() {
			v.resources[res.GetName()] = res.GetResource().GetValue()
			v.versions[res.GetName()] = res.GetVersion()
			m, _, err := xdsclient.Decode(res.GetResource())
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *clusterv3.Cluster:
				if m.GetType() == clusterv3.Cluster_EDS {
					next = append(next, res.GetName())
				}
			case *listenerv3.Listener:
				for _, h := range xdsclient.HTTPConnectionManagers(m) {
					if n := h.GetRds().GetRouteConfigName(); n != "" {
						next = append(next, n)
					}
				}
			}
		}
		out[typeURL] = v
		slices.Sort(next)
		return next
	}
	eds := sync(resourcev3.ClusterType, nil)
	sync(resourcev3.EndpointType, eds)
	rds := sync(resourcev3.ListenerType, nil)
	sync(resourcev3.RouteType, rds)
	return out
}

// sameViews reports every difference between what two replicas sent.
func sameViews(t *testing.T, kind string, a, b map[string]typeView) {
	t.Helper()
	for _, typeURL := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		va, vb := a[typeURL], b[typeURL]
		name := kind + " " + strings.TrimPrefix(typeURL, resourcev3.APITypePrefix)
		if va.version == "" || va.version != vb.version {
			t.Errorf("%s: versions %q and %q, want equal and set", name, va.version, vb.version)
		}
		if len(va.resources) == 0 || len(va.resources) != len(vb.resources) {
			t.Errorf("%s: %d and %d resources", name, len(va.resources), len(vb.resources))
		}
		for n, bytesA := range va.resources {
			if bytesB, ok := vb.resources[n]; !ok || !bytes.Equal(bytesA, bytesB) {
				t.Errorf("%s %s: not byte-equal on the two replicas (present on both: %v)", name, n, ok)
			}
			if va.versions[n] != vb.versions[n] {
				t.Errorf("%s %s: resource versions %q and %q", name, n, va.versions[n], vb.versions[n])
			}
		}
	}
}

// TestReplicasServeTheSame: two replicas of mesh control over one real
// Consul, with different histories (the second starts later, after the
// first saw a change and its revert), send byte-equal resources with
// equal versions, on state-of-the-world and delta streams alike.
func TestReplicasServeTheSame(t *testing.T) {
	replicaCatalog(t, "rep", 12)
	caDir := t.TempDir() + "/ca"
	shareCA := func(c *config.Config) { c.Control.CA.Dir = caDir } // replicas share the CA (docs/operations.md)
	p1 := startPlane(t, "", shareCA)
	waitServices(t, p1, "rep", 12)
	// History only the first replica sees: a check flips and flips back.
	setCheck(t, "rep-03-0", "critical")
	waitHealth(t, p1, "rep-03", "rep-03-0", model.Unhealthy)
	setCheck(t, "rep-03-0", "passing")
	waitHealth(t, p1, "rep-03", "rep-03-0", model.Healthy)
	p2 := startPlane(t, "", shareCA)
	waitServices(t, p2, "rep", 12)
	meshtest.Eventually(t, 10*time.Second, func() error {
		if !p1.Model().Equal(p2.Model()) {
			return errors.New("the replicas' models differ")
		}
		return nil
	})

	s1, s2 := sotwView(t, p1.xdsAddr, "vm-replica"), sotwView(t, p2.xdsAddr, "vm-replica")
	sameViews(t, "sotw", s1, s2)
	d1, d2 := deltaView(t, p1.xdsAddr, "vm-replica-d"), deltaView(t, p2.xdsAddr, "vm-replica-d")
	sameViews(t, "delta", d1, d2)
	if n := len(s1[resourcev3.ClusterType].resources); n < 12 {
		t.Errorf("only %d clusters served", n)
	}
	// The delta EDS system version is the content version, as on SotW
	// streams: no per-process counter leaves a replica.
	if d1[resourcev3.EndpointType].version != s1[resourcev3.EndpointType].version {
		t.Errorf("delta EDS system version %q, SotW EDS version %q: want the content version on both",
			d1[resourcev3.EndpointType].version, s1[resourcev3.EndpointType].version)
	}
}

// TestStartingReplicaRefusesStreams: a replica whose first view is not
// built yet (its Consul is unreachable) refuses ADS streams, SotW and
// delta, with UNAVAILABLE, so an agent fails over to another replica;
// /ready says it is not ready. Once Consul answers, its first response
// is the complete view, the same as a replica that was already serving.
func TestStartingReplicaRefusesStreams(t *testing.T) {
	replicaCatalog(t, "fresh", 8)
	serving := startPlane(t, "", nil)
	waitServices(t, serving, "fresh", 8)

	rl := meshtest.StartRelay(t, testConsul.Addr)
	rl.Down()
	p := launchPlane(t, rl.Addr(), nil)
	conn, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	refused := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := ads.StreamAggregatedResources(ctx)
		if err == nil {
			err = s.Send(&discovery.DiscoveryRequest{Node: agentNode("vm-early", "fresh-00", 8080), TypeUrl: resourcev3.ClusterType})
		}
		// io.EOF: the server ended the stream first; Recv has its status.
		if err == nil || errors.Is(err, io.EOF) {
			var r *discovery.DiscoveryResponse
			if r, err = s.Recv(); err == nil {
				return fmt.Errorf("a starting replica answered with %d %s", len(r.GetResources()), r.GetTypeUrl())
			}
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "starting") {
			return fmt.Errorf("sotw stream ended with %v, want UNAVAILABLE: starting", err)
		}
		d, err := ads.DeltaAggregatedResources(ctx)
		if err == nil {
			err = d.Send(&discovery.DeltaDiscoveryRequest{Node: agentNode("vm-early", "fresh-00", 8080), TypeUrl: resourcev3.ClusterType})
		}
		if err == nil || errors.Is(err, io.EOF) {
			var r *discovery.DeltaDiscoveryResponse
			if r, err = d.Recv(); err == nil {
				return fmt.Errorf("a starting replica answered a delta stream with %d %s", len(r.GetResources()), r.GetTypeUrl())
			}
		}
		if status.Code(err) != codes.Unavailable {
			return fmt.Errorf("delta stream ended with %v, want UNAVAILABLE", err)
		}
		return nil
	}
	if err := refused(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // still refusing a while later
	if err := refused(); err != nil {
		t.Fatal(err)
	}
	if code, err := httpGet("http://" + p.adminAddr + "/ready"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/ready of the starting replica = %d %v, want 503", code, err)
	}
	if err := metricAbove(p.adminAddr, "mesh_xds_refused_not_ready_total", 1); err != nil {
		t.Error(err)
	}

	rl.Up(t)
	meshtest.Eventually(t, 20*time.Second, func() error {
		if code, err := httpGet("http://" + p.adminAddr + "/ready"); err != nil || code != http.StatusOK {
			return fmt.Errorf("/ready %d %v", code, err)
		}
		return nil
	})
	want := sotwView(t, serving.xdsAddr, "vm-fresh")
	got := sotwView(t, p.xdsAddr, "vm-fresh")
	sameViews(t, "fresh replica", want, got)
}
