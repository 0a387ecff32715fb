package translate_test

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
)

// changes is a series of catalog edits, each naming what it touched, as a
// source's View.Changed does.
func changes() []func(v *model.View) []string {
	inst := func(s, i int) model.Instance {
		return model.Instance{
			Service: fmt.Sprintf("svc-%02d", s), ID: fmt.Sprintf("svc-%02d-%d", s, i), Node: fmt.Sprintf("vm-%d", i),
			Address: fmt.Sprintf("10.0.%d.%d", s, i+1), Port: 15006, Check: model.CheckPassing,
			Meta: map[string]string{"app_port": "8080", "mesh_zone": fmt.Sprintf("z%d", i%2)},
		}
	}
	return []func(v *model.View) []string{
		func(v *model.View) []string { // the catalog
			for s := 0; s < 20; s++ {
				for i := 0; i < 3; i++ {
					v.Instances = append(v.Instances, inst(s, i))
				}
			}
			return nil
		},
		func(v *model.View) []string { v.Instances[4].Check = model.CheckCritical; return []string{"svc-01"} },
		func(v *model.View) []string { v.Instances[7].Port = 15007; return []string{"svc-02"} },
		func(v *model.View) []string { // a service added
			v.Instances = append(v.Instances, inst(30, 0), inst(30, 1))
			return []string{"svc-30"}
		},
		func(v *model.View) []string { // a service removed
			out := v.Instances[:0]
			for _, in := range v.Instances {
				if in.Service != "svc-05" {
					out = append(out, in)
				}
			}
			v.Instances = out
			return []string{"svc-05"}
		},
		func(v *model.View) []string { // a duplicate address: a conflict
			d := v.Instances[0]
			d.ID = "svc-00-dup"
			v.Instances = append(v.Instances, d)
			return []string{"svc-00"}
		},
		func(v *model.View) []string { // the mTLS meta of one instance
			v.Instances[9].Meta = map[string]string{"app_port": "9090", "mesh_mtls": "strict"}
			return []string{"svc-03"}
		},
		func(v *model.View) []string { return []string{} }, // nothing
	}
}

// TestIncrementalMatchesFull: translating only the changed services gives
// the same resources, and the same merged model, as merging and
// translating everything again.
func TestIncrementalMatchesFull(t *testing.T) {
	for _, cidr := range []string{"", "240.0.0.0/16"} {
		opts := model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}, VirtualIPCIDR: cidr}
		tr := translate.NewTranslator()
		var v model.View
		var prev *model.Model
		for step, change := range changes() {
			names := change(&v)
			changed := map[string]bool(nil)
			if names != nil {
				changed = map[string]bool{}
				for _, n := range names {
					changed[n] = true
				}
			}
			m := model.MergeChanged(prev, []model.View{v}, opts, changed)
			full := model.Merge([]model.View{v}, opts)
			if !m.Equal(&full) || fmt.Sprint(m.Conflicts) != fmt.Sprint(full.Conflicts) {
				t.Fatalf("cidr %q step %d: incremental merge differs from the full one", cidr, step)
			}
			if step > 0 && m.Changed == nil {
				t.Fatalf("step %d: the merge did not name the changed services", step)
			}
			got, err := tr.Translate(&m, opts.Policies)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if step > 0 && got.Base() == nil {
				t.Fatalf("step %d: the translation was not incremental", step)
			}
			want, err := translate.Translate(&full, opts.Policies)
			if err != nil {
				t.Fatal(err)
			}
			gs, ws := got.SharedSets(), want.SharedSets()
			for name, w := range ws {
				g := gs[name]
				if len(g) != len(w) {
					t.Fatalf("step %d: %s has %d resources, want %d", step, name, len(g), len(w))
				}
				for k, r := range w {
					if !proto.Equal(g[k], r) {
						t.Fatalf("step %d: %s %s differs from the full translation", step, name, k)
					}
				}
			}
			for _, n := range []model.Node{{ID: "svc-03-1", Service: "svc-03", AppPort: 8080}, {ID: "vm-1", Service: "svc-01"}} {
				a, err := got.Node(n)
				if err != nil {
					t.Fatal(err)
				}
				b, err := want.Node(n)
				if err != nil {
					t.Fatal(err)
				}
				ra, rb := a.Resources(), b.Resources()
				for i, sa := range []translate.Set{ra.Clusters, ra.Endpoints, ra.Listeners, ra.Routes} {
					sb := []translate.Set{rb.Clusters, rb.Endpoints, rb.Listeners, rb.Routes}[i]
					if len(sa) != len(sb) {
						t.Fatalf("step %d: node %s type %d: %d resources, want %d", step, n.ID, i, len(sa), len(sb))
					}
					for k := range sb {
						if !proto.Equal(sa[k], sb[k]) {
							t.Fatalf("step %d: node %s resource %s differs", step, n.ID, k)
						}
					}
				}
			}
			prev = &m
		}
	}
}
