package xds_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
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
