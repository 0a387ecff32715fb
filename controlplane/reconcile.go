package controlplane

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/controlplane/xds"
)

// input is a source and whether the first model waits for it.
type input struct {
	src source.Source
	// required sources must have sent a view before the first model is
	// built; the others are awaited for at most firstWait.
	required bool
}

// reconciler keeps the latest view of each source, debounces changes,
// merges them into a model, translates it and hands it to the xDS server.
type reconciler struct {
	log       zerolog.Logger
	inputs    []input
	debounce  time.Duration
	firstWait time.Duration
	opts      model.MergeOptions
	xds       *xds.Server
	metrics   *metrics
	// translator is used by the Run goroutine only.
	translator *translate.Translator

	current atomic.Pointer[model.Model]
}

type update struct {
	i    int
	view model.View
}

// Run runs the sources and reconciles until ctx is done.
func (r *reconciler) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	updates := make(chan update)
	for i, in := range r.inputs {
		views := make(chan model.View)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := in.src.Run(ctx, views); err != nil {
				r.log.Error().Err(err).Str("source", in.src.Name()).Msg("source stopped")
			}
		}()
		go func() {
			defer wg.Done()
			for {
				select {
				case v := <-views:
					select {
					case updates <- update{i: i, view: v}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}

	views := make([]*model.View, len(r.inputs))
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	first := time.NewTimer(r.firstWait)
	defer first.Stop()
	graceOver, pending, armed := false, false, false
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-updates:
			v := u.view
			views[u.i] = &v
			pending = true
			if !armed {
				debounce.Reset(r.debounce)
				armed = true
			}
			continue
		case <-debounce.C:
			armed = false
		case <-first.C:
			graceOver = true
		}
		if pending && r.canBuild(views, graceOver) {
			pending = false
			r.build(ctx, views)
		}
	}
}

func (r *reconciler) canBuild(views []*model.View, graceOver bool) bool {
	all := true
	for i, in := range r.inputs {
		if views[i] == nil {
			if in.required {
				return false
			}
			all = false
		}
	}
	return all || graceOver
}

// build merges, translates and sets the snapshots; an unchanged model
// costs only the merge and comparison.
func (r *reconciler) build(ctx context.Context, views []*model.View) {
	start := time.Now()
	vs := make([]model.View, 0, len(views))
	for _, v := range views {
		if v != nil {
			vs = append(vs, *v)
		}
	}
	m := model.Merge(vs, r.opts)
	if prev := r.current.Load(); prev != nil && prev.Equal(&m) {
		return
	}
	mesh, err := r.translator.Translate(&m)
	if err == nil {
		err = r.xds.Update(ctx, mesh)
	}
	if err != nil {
		r.metrics.buildFails.Inc()
		r.log.Error().Err(err).Msg("new model refused, previous snapshots keep serving")
		return
	}
	r.current.Store(&m)
	services, _ := m.Counts()
	r.metrics.services.Set(float64(services))
	counts := map[model.Health]int{model.Healthy: 0, model.Unhealthy: 0, model.Draining: 0}
	for _, s := range m.Services {
		for _, ep := range s.Endpoints {
			counts[ep.Health]++
		}
	}
	for h, n := range counts {
		r.metrics.endpoints.WithLabelValues(string(h)).Set(float64(n))
	}
	took := time.Since(start)
	r.metrics.buildTime.Observe(took.Seconds())
	r.log.Debug().Int("services", services).Dur("took", took).Msg("snapshots updated")
}
