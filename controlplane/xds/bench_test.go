package xds_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
	"github.com/meshvm/mesh/wire"
)

// catalog is a synthetic Consul view: services x instances over 2 zones.
func catalog(services, instances int) model.View {
	v := model.View{Instances: make([]model.Instance, 0, services*instances)}
	for s := 0; s < services; s++ {
		for i := 0; i < instances; i++ {
			v.Instances = append(v.Instances, model.Instance{
				Service: fmt.Sprintf("svc-%05d", s), ID: fmt.Sprintf("svc-%05d-%d", s, i), Node: fmt.Sprintf("vm-%d", i),
				Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006, Check: model.CheckPassing, Weight: 1,
				Meta: map[string]string{"app_port": "8080", "mesh_version": "0.1.0", "mesh_zone": fmt.Sprintf("z%d", i%2), "mesh_region": "r1"},
			})
		}
	}
	return v
}

// BenchmarkSnapshotBuild measures a full rebuild after a change: merge,
// translate, validate every resource, hash, and set the snapshots of the
// connected nodes (0 or 100 agents).
func BenchmarkSnapshotBuild(b *testing.B) {
	for _, size := range []struct{ services, nodes int }{{1000, 0}, {1000, 100}, {10000, 0}, {10000, 100}} {
		b.Run(fmt.Sprintf("%dx10/nodes=%d", size.services, size.nodes), func(b *testing.B) {
			view := catalog(size.services, 10)
			opts := model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}}
			srv := xds.New(zerolog.Nop(), nil)
			for n := 0; n < size.nodes; n++ {
				srv.AddNode(model.Node{ID: fmt.Sprintf("agent-%d", n), Service: fmt.Sprintf("svc-%05d", n), AppPort: 8080})
			}
			ctx := context.Background()
			tr := translate.NewTranslator()
			var prev *model.Model
			build := func(i int) {
				// Every build changes one endpoint, as a health change does,
				// and names its service, as the Consul source does
				// (View.Changed): merge, translate and hash touch it only.
				in := &view.Instances[i%len(view.Instances)]
				in.Check = []model.Check{model.CheckPassing, model.CheckCritical}[i%2]
				m := model.MergeChanged(prev, []model.View{view}, opts, map[string]bool{in.Service: true})
				mesh, err := tr.Translate(&m, opts.Policies)
				if err != nil {
					b.Fatal(err)
				}
				if err := srv.Update(ctx, mesh); err != nil {
					b.Fatal(err)
				}
				prev = &m
			}
			build(1) // the first, full build
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				build(i)
			}
		})
	}
}

// BenchmarkFirstBuild measures the cold build of a whole catalog.
func BenchmarkFirstBuild(b *testing.B) {
	for _, services := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("%dx10", services), func(b *testing.B) {
			view := catalog(services, 10)
			opts := model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}}
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				srv := xds.New(zerolog.Nop(), nil)
				m := model.Merge([]model.View{view}, opts)
				mesh, err := translate.Translate(&m, opts.Policies)
				if err != nil {
					b.Fatal(err)
				}
				if err := srv.Update(ctx, mesh); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// deltaFleet is a server holding a services x 10 catalog and nodes agents,
// each with a delta CDS subscription to 10 services and its local_app
// cluster, answered and ACKed (an open watch holding what it was sent).
type deltaFleet struct {
	srv  *xds.Server
	view model.View
	opts model.MergeOptions
	tr   *translate.Translator
	prev *model.Model
	subs []stream.Subscription
	outs []chan cache.DeltaResponse
}

func newDeltaFleet(b *testing.B, services, nodes int) *deltaFleet {
	f := &deltaFleet{srv: xds.New(zerolog.Nop(), nil), view: catalog(services, 10),
		opts: model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}}, tr: translate.NewTranslator()}
	f.update(b, nil)
	for n := 0; n < nodes; n++ {
		id := fmt.Sprintf("agent-%d", n)
		f.srv.AddNode(agentNode(id, n, services))
		sub := stream.NewDeltaSubscription(agentClusters(n, services), nil, nil, false)
		out := make(chan cache.DeltaResponse, 1)
		resp := f.deltaRequest(b, id, sub, out)
		if len(resp.GetReturnedResources()) != 11 {
			b.Fatalf("node %s holds %d clusters, want 11", id, len(resp.GetReturnedResources()))
		}
		sub.SetReturnedResources(resp.GetReturnedResources())
		// The ACK: a watch that holds what it was sent.
		if cancel, err := f.srv.DeltaWatch(id, resourcev3.ClusterType, sub, out); err != nil || cancel == nil {
			b.Fatalf("ACK of node %s: answered at once (%v) or %v", id, cancel == nil, err)
		}
		f.subs, f.outs = append(f.subs, sub), append(f.outs, out)
	}
	return f
}

func agentNode(id string, n, services int) model.Node {
	return model.Node{ID: id, Service: fmt.Sprintf("svc-%05d", n%services), AppPort: 8080}
}

// agentClusters is what agent n subscribes to: 10 services and local_app.
func agentClusters(n, services int) []string {
	names := []string{wire.LocalAppCluster}
	for k := 0; k < 10; k++ {
		names = append(names, fmt.Sprintf("svc-%05d", (n*7+k*997)%services))
	}
	return names
}

// deltaRequest opens a delta CDS watch for node id and returns the
// response it was answered with at once, marshalled as the server sends it.
func (f *deltaFleet) deltaRequest(b *testing.B, id string, sub stream.Subscription, out chan cache.DeltaResponse) cache.DeltaResponse {
	if _, err := f.srv.DeltaWatch(id, resourcev3.ClusterType, sub, out); err != nil {
		b.Fatal(err)
	}
	select {
	case resp := <-out:
		if _, err := resp.GetDeltaDiscoveryResponse(); err != nil {
			b.Fatal(err)
		}
		return resp
	default:
		b.Fatalf("node %s: no response to its first delta request", id)
		return nil
	}
}

// update builds and serves the view, naming changed (nil: everything).
func (f *deltaFleet) update(b *testing.B, changed map[string]bool) {
	m := model.MergeChanged(f.prev, []model.View{f.view}, f.opts, changed)
	mesh, err := f.tr.Translate(&m, f.opts.Policies)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.srv.Update(context.Background(), mesh); err != nil {
		b.Fatal(err)
	}
	f.prev = &m
}

// BenchmarkDeltaFirstRequest measures what one agent's connection costs
// the control plane at 10,000 services x 10 with 100 other agents
// connected: registering the node (its snapshot) and answering its first
// delta CDS request, 10 services and local_app, marshalled.
func BenchmarkDeltaFirstRequest(b *testing.B) {
	const services = 10000
	f := newDeltaFleet(b, services, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("new-%d", i)
		f.srv.AddNode(agentNode(id, i, services))
		out := make(chan cache.DeltaResponse, 1)
		if resp := f.deltaRequest(b, id, stream.NewDeltaSubscription(agentClusters(i, services), nil, nil, false), out); len(resp.GetReturnedResources()) != 11 {
			b.Fatalf("%d clusters, want 11", len(resp.GetReturnedResources()))
		}
		f.srv.RemoveNode(id)
	}
}

// BenchmarkDeltaClusterPush measures a change of the shared clusters (a
// service added, then removed: a service nobody subscribes to) at 10,000
// services x 10 with 1,000 agents holding open delta CDS watches: every
// node's snapshot moves, none is sent anything. Per op: one change;
// divide by 1,000 for the cost per node.
func BenchmarkDeltaClusterPush(b *testing.B) {
	const services, nodes = 10000, 1000
	f := newDeltaFleet(b, services, nodes)
	base := f.view.Instances
	extra := catalog(services+1, 1).Instances[services:]
	extra[0].Service, extra[0].ID = "svc-extra", "svc-extra-0"
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f.view.Instances = base
		if i%2 == 0 {
			f.view.Instances = append(base[:len(base):len(base)], extra...)
		}
		f.update(b, map[string]bool{"svc-extra": true})
	}
	b.StopTimer()
	for n, out := range f.outs {
		select {
		case resp := <-out:
			b.Fatalf("agent %d was sent %d clusters for a service it does not use", n, len(resp.GetReturnedResources()))
		default:
		}
	}
}
