package controlplane

import (
	"context"
	"errors"
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

// reconciler keeps the latest view of each source, debounces changes
// (at most one build per interval; a change after a quiet interval is
// built at once), merges them into a model, translates it and hands it to the xDS server.
type reconciler struct {
	log       zerolog.Logger
	inputs    []input
	debounce  time.Duration
	firstWait time.Duration
	opts      model.MergeOptions
	xds       *xds.Server
	metrics   *metrics
	// translator is used by the Run goroutine only; gateway is what it
	// was given last (SetGateway).
	translator *translate.Translator
	gateway    *translate.Gateway
	authz      translate.Authorization // the translator's
	// reconf carries reloads to the Run goroutine; done is closed when
	// Run returns.
	reconf chan reconfig
	done   chan struct{}

	current atomic.Pointer[model.Model]
	// served, when set, is handed each new model once it is served (the
	// Kubernetes export).
	served func(*model.Model)
	// conflicts are the last model's, reported when they change; used by
	// the Run goroutine only.
	conflicts map[model.Conflict]bool
	// changed are the services the views changed since the current model
	// was built (the sources' View.Changed); nil when a view did not say
	// (the next build merges everything). Run goroutine only.
	changed map[string]bool
}

// settings are the reconciler's knobs a reload can change.
type settings struct {
	debounce time.Duration
	mtls     translate.MTLS
	merge    model.MergeOptions
	// gateway is what gateway nodes get (gatewaySettings).
	gateway *translate.Gateway
	authz   translate.Authorization
}

// reconfig asks the Run goroutine to apply settings; it answers on result.
type reconfig struct {
	settings
	result chan error
}

func newReconciler(log zerolog.Logger, inputs []input, s settings, firstWait time.Duration, xs *xds.Server, m *metrics) *reconciler {
	tr := newTranslator(s.mtls, s.gateway)
	tr.SetAuthorization(s.authz)
	return &reconciler{
		log:        log,
		inputs:     inputs,
		debounce:   s.debounce,
		firstWait:  firstWait,
		opts:       s.merge,
		xds:        xs,
		metrics:    m,
		translator: tr,
		gateway:    s.gateway,
		authz:      s.authz,
		reconf:     make(chan reconfig),
		done:       make(chan struct{}),
	}
}

// errNotRunning is reconfigure's answer once Run has returned.
var errNotRunning = errors.New("the control plane is not running")

// reconfigure applies s in the Run goroutine, rebuilding the model at once
// when one can be built; on error the previous settings stay. It waits for
// Run to start, and fails once Run has returned.
func (r *reconciler) reconfigure(ctx context.Context, s settings) error {
	rc := reconfig{settings: s, result: make(chan error, 1)}
	select {
	case r.reconf <- rc:
	case <-r.done:
		return errNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-rc.result
}

// apply installs s and rebuilds from views (when they can build a model)
// even if the merged model is unchanged: the configured policies of nodes
// whose service the model does not know may have changed. On failure the
// previous settings are put back and nothing was pushed.
func (r *reconciler) apply(ctx context.Context, s settings, views []*model.View, canBuild bool) error {
	prev := settings{debounce: r.debounce, merge: r.opts, mtls: r.translator.MTLS, gateway: r.gateway, authz: r.authz}
	r.debounce, r.opts, r.translator.MTLS, r.authz = s.debounce, s.merge, s.mtls, s.authz
	r.setGateway(s.gateway)
	r.translator.SetAuthorization(s.authz)
	if !canBuild {
		return nil
	}
	if err := r.build(ctx, views, true); err != nil {
		r.debounce, r.opts, r.translator.MTLS, r.authz = prev.debounce, prev.merge, prev.mtls, prev.authz
		r.setGateway(prev.gateway)
		r.translator.SetAuthorization(prev.authz)
		return err
	}
	return nil
}

type update struct {
	i    int
	view model.View
}

// Run runs the sources and reconciles until ctx is done.
func (r *reconciler) Run(ctx context.Context) error {
	defer close(r.done)
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
	// lastBuild is when the last build ended: a change arriving later
	// than one debounce interval after it is built at once, the ones
	// arriving sooner wait for the rest of the interval, together (at
	// most one build per interval, none delayed after a quiet one).
	var lastBuild time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case rc := <-r.reconf:
			can := r.canBuild(views, graceOver)
			err := r.apply(ctx, rc.settings, views, can)
			if can && err == nil {
				pending = false // built from the latest views
			}
			rc.result <- err
			continue
		case u := <-updates:
			v := u.view
			r.noteChanged(views[u.i] == nil, v.Changed)
			views[u.i] = &v
			pending = true
			if armed {
				continue
			}
			if wait := r.debounce - time.Since(lastBuild); wait > 0 {
				debounce.Reset(wait)
				armed = true
				continue
			}
		case <-debounce.C:
			armed = false
		case <-first.C:
			graceOver = true
		}
		if pending && r.canBuild(views, graceOver) {
			pending = false
			if err := r.build(ctx, views, false); err != nil {
				r.log.Error().Err(err).Msg("new model refused, previous snapshots keep serving")
			}
			lastBuild = time.Now()
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

// build merges, translates and sets the snapshots; unless force is set,
// an unchanged model costs only the merge and comparison. A model that
// does not translate is counted and returned as an error; the previous
// snapshots keep serving.
func (r *reconciler) build(ctx context.Context, views []*model.View, force bool) error {
	start := time.Now()
	vs := make([]model.View, 0, len(views))
	for _, v := range views {
		if v != nil {
			vs = append(vs, *v)
		}
	}
	prev := r.current.Load()
	var m model.Model
	if changed := r.changed; !force && prev != nil && changed != nil {
		m = model.MergeChanged(prev, vs, r.opts, changed)
	} else {
		m = model.Merge(vs, r.opts)
	}
	r.reportConflicts(m.Conflicts)
	if !force && prev != nil && sameModel(prev, &m) {
		r.changed = map[string]bool{}
		return nil
	}
	mesh, err := r.translator.Translate(&m, r.opts.Policies)
	if err == nil {
		err = r.xds.Update(ctx, mesh)
	}
	if err != nil {
		r.metrics.buildFails.Inc()
		return err
	}
	r.current.Store(&m)
	r.changed = map[string]bool{}
	if r.served != nil {
		r.served(&m)
	}
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
	return nil
}

// noteChanged adds a new view's changed services to those since the
// current model; a view that does not name them (or a source's first)
// makes the next build a full merge.
func (r *reconciler) noteChanged(first bool, changed []string) {
	if first || changed == nil {
		r.changed = nil
		return
	}
	if r.changed == nil {
		return
	}
	for _, name := range changed {
		r.changed[name] = true
	}
}

// sameModel reports whether m serves what prev does; a model merged
// incrementally is compared on the services it names only.
func sameModel(prev, m *model.Model) bool {
	if m.Changed == nil {
		return prev.Equal(m)
	}
	if len(prev.Services) != len(m.Services) {
		return false
	}
	for _, name := range m.Changed {
		a, b := prev.Service(name), m.Service(name)
		if (a == nil) != (b == nil) || a != nil && !a.Equal(b) {
			return false
		}
	}
	return true
}

// reportConflicts logs each conflict (two instances of a service on one
// address:port) the first time it is seen, and sets the gauge.
func (r *reconciler) reportConflicts(cs []model.Conflict) {
	now := make(map[model.Conflict]bool, len(cs))
	for _, c := range cs {
		now[c] = true
		if !r.conflicts[c] {
			r.log.Warn().Str("service", c.Service).Str("address", c.Address).Str("kept", c.Kept).Str("dropped", c.Dropped).
				Msg("two endpoints of a service share an address; one is kept")
		}
	}
	r.conflicts = now
	r.metrics.conflicts.Set(float64(len(cs)))
}

// newTranslator is a translator applying the mTLS policy m and giving
// gateway nodes g.
func newTranslator(m translate.MTLS, g *translate.Gateway) *translate.Translator {
	t := translate.NewTranslator()
	t.MTLS = m
	t.SetGateway(g)
	return t
}
