// Package kubernetes is the control plane's Kubernetes source: shared
// informers on Services and EndpointSlices (and Nodes, for locality) in
// the configured namespaces, turned into a full view of instances on each
// change (see BuildView for the mapping). The informers keep their caches
// while the API server is unreachable, so the last good view stays in
// force; list and watch failures are counted in the source's Status and
// logged, and a relist after the API server comes back sends a view only
// if something changed.
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
)

// Name is the source's name in logs and metrics.
const Name = "kubernetes"

// Options tune the source; zero values take defaults.
type Options struct {
	// Probe is how often the API server's /version is read to tell that
	// it is reachable while no list or watch is failing (default 10s).
	Probe time.Duration
	// Settle is how long the source waits after an event for more before
	// it builds a view (default 10ms): a burst of events is one view.
	Settle time.Duration
}

// Source watches a Kubernetes API server.
type Source struct {
	cfg      config.Kubernetes
	client   kubernetes.Interface
	selector string
	log      zerolog.Logger
	opts     Options
	status   source.Tracker

	mu sync.Mutex
	// failing holds the informers whose last list or watch failed.
	failing map[string]error
	// lastWarn is when a failure was last logged at warn level.
	lastWarn time.Time
}

// NewClient returns a client for cfg: cfg.Kubeconfig when set, else the
// in-cluster config, else $KUBECONFIG. It contacts nothing.
func NewClient(cfg config.Kubernetes) (kubernetes.Interface, error) {
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	// Informers list once and then watch; the export writes in bursts.
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "mesh-control"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err == nil {
		return rc, nil
	}
	if !errors.Is(err, rest.ErrNotInCluster) {
		return nil, fmt.Errorf("in-cluster kubernetes config: %w", err)
	}
	if os.Getenv("KUBECONFIG") == "" {
		return nil, errors.New("no kubernetes config: not running in a pod, and neither control.kubernetes.kubeconfig (--kubeconfig) nor $KUBECONFIG is set")
	}
	rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig from $KUBECONFIG: %w", err)
	}
	return rc, nil
}

// New returns a source for cfg reading through client; it contacts
// nothing. A label selector that does not parse is an error.
func New(cfg config.Kubernetes, client kubernetes.Interface, log zerolog.Logger, opts Options) (*Source, error) {
	if opts.Probe <= 0 {
		opts.Probe = 10 * time.Second
	}
	if opts.Settle <= 0 {
		opts.Settle = 10 * time.Millisecond
	}
	sel, err := labels.Parse(cfg.LabelSelector)
	if err != nil {
		return nil, fmt.Errorf("control.kubernetes.label_selector %q: %w", cfg.LabelSelector, err)
	}
	// mesh's own Services (the VM export) are never read back.
	notOurs, err := labels.NewRequirement(LabelManagedBy, selection.NotEquals, []string{ManagedBy})
	if err != nil {
		return nil, err
	}
	sel = sel.Add(*notOurs)
	return &Source{cfg: cfg, client: client, selector: sel.String(), log: log, opts: opts, failing: map[string]error{}}, nil
}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// Status implements source.Source.
func (s *Source) Status() source.Status { return s.status.Status() }

// informer is one shared informer and what it lists.
type informer struct {
	name string
	inf  cache.SharedIndexInformer
}

// Run implements source.Source: it starts the informers, sends the first
// view once all have synced, and a new view after each change that
// changes it.
func (s *Source) Run(ctx context.Context, out chan<- model.View) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	routeKlog(s.log)

	namespaces := s.cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var services, eps []informer
	for _, ns := range namespaces {
		services = append(services, s.informer("services", ns, &corev1.Service{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = s.selector
				return s.client.CoreV1().Services(ns).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.LabelSelector = s.selector
				return s.client.CoreV1().Services(ns).Watch(ctx, o)
			}))
		eps = append(eps, s.informer("endpointslices", ns, &discoveryv1.EndpointSlice{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = slicesSelector
				return s.client.DiscoveryV1().EndpointSlices(ns).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.LabelSelector = slicesSelector
				return s.client.DiscoveryV1().EndpointSlices(ns).Watch(ctx, o)
			}))
	}
	all := append(append([]informer{}, services...), eps...)
	var nodes *informer
	if s.cfg.Nodes {
		n := s.informer("nodes", "", &corev1.Node{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return s.client.CoreV1().Nodes().List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return s.client.CoreV1().Nodes().Watch(ctx, o)
			})
		nodes = &n
		all = append(all, n)
	}

	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	synced := make([]cache.InformerSynced, 0, len(all))
	for _, in := range all {
		if _, err := in.inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("kubernetes %s informer: %w", in.name, err)
		}
		synced = append(synced, in.inf.HasSynced)
		wg.Add(1)
		go func() { defer wg.Done(); in.inf.RunWithContext(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.probe(ctx) }()

	s.log.Info().Strs("namespaces", s.cfg.Namespaces).Str("label_selector", s.cfg.LabelSelector).
		Bool("nodes", s.cfg.Nodes).Msg("watching kubernetes")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	s.log.Info().Msg("kubernetes informers synced")
	naming := Naming{DefaultNamespace: s.cfg.DefaultNamespace}
	var last []model.Instance
	first := true
	for {
		objs := Objects{}
		for _, in := range services {
			for _, o := range in.inf.GetStore().List() {
				objs.Services = append(objs.Services, o.(*corev1.Service))
			}
		}
		for _, in := range eps {
			for _, o := range in.inf.GetStore().List() {
				objs.Slices = append(objs.Slices, o.(*discoveryv1.EndpointSlice))
			}
		}
		if nodes != nil {
			objs.Nodes = map[string]*corev1.Node{}
			for _, o := range nodes.inf.GetStore().List() {
				n := o.(*corev1.Node)
				objs.Nodes[n.Name] = n
			}
		}
		view := BuildView(objs, naming)
		if first || !equalViews(view, last) {
			select {
			case out <- model.View{Instances: view}:
			case <-ctx.Done():
				return nil
			}
			s.log.Debug().Int("instances", len(view)).Int("services", len(objs.Services)).
				Int("endpointslices", len(objs.Slices)).Msg("kubernetes view sent")
			last, first = view, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		if !source.Sleep(ctx, s.opts.Settle) {
			return nil
		}
		select {
		case <-changed: // the events of the settle window are in this view
		default:
		}
	}
}

// slicesSelector reads the EndpointSlices of Services, not mesh's own.
var slicesSelector = discoveryv1.LabelServiceName + "," + LabelSliceManagedBy + "!=" + ManagedBy

// informer returns a shared informer over list and watch that records
// their failures and successes, and keeps only what BuildView reads.
func (s *Source) informer(kind, ns string, example runtime.Object,
	list cache.ListWithContextFunc, watchFn cache.WatchFuncWithContext) informer {
	name := kind
	if ns != "" {
		name = kind + " in " + ns
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, o)
			s.observe(ctx, name, "list", err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			s.observe(ctx, name, "watch", err)
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformer(lw, example, 0, cache.Indexers{})
	_ = inf.SetTransform(trim)
	_ = inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		// A watch that ends (the API server restarts, a timeout) is
		// restarted by the reflector; a list or watch that cannot start
		// is already counted by observe.
		if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			s.log.Debug().Err(err).Str("informer", name).Msg("kubernetes watch ended")
		}
	})
	return informer{name: name, inf: inf}
}

// trim drops what the view never reads (managed fields, annotations such
// as last-applied-configuration), so 2,000 Services cost what they carry.
func trim(o any) (any, error) {
	if m, ok := o.(metav1.Object); ok {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return o, nil
}

// observe records one list or watch call of an informer.
func (s *Source) observe(ctx context.Context, name, op string, err error) {
	if ctx.Err() != nil {
		return
	}
	if op == "watch" && watchListRefused(err) {
		// client-go first asks for a streaming list (a watch with
		// sendInitialEvents); an API server without the WatchList
		// feature refuses it and the reflector falls back to list and
		// watch at once. Not a failure of the API server.
		s.log.Debug().Err(err).Str("informer", name).Msg("kubernetes api has no streaming list; listing instead")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", op, name, err)
		s.status.Failed(err)
		_, was := s.failing[name]
		s.failing[name] = err
		if !was || time.Since(s.lastWarn) > 30*time.Second {
			s.lastWarn = time.Now()
			s.log.Warn().Err(err).Msg("kubernetes api failing; the last good view stays in force")
		}
		return
	}
	if _, was := s.failing[name]; was {
		delete(s.failing, name)
		s.log.Info().Str("informer", name).Msg("kubernetes api reachable again; resyncing")
	}
	if len(s.failing) == 0 {
		s.status.Succeeded()
	}
}

// watchListRefused reports whether err is an API server refusing a
// streaming list (sendInitialEvents without the WatchList feature).
func watchListRefused(err error) bool {
	return err != nil && apierrors.IsInvalid(err) && strings.Contains(err.Error(), "sendInitialEvents")
}

// probe reads /version every Probe: a success counts as a successful read
// while no informer is failing; a failure is counted and logged.
func (s *Source) probe(ctx context.Context) {
	t := time.NewTicker(s.opts.Probe)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, s.opts.Probe)
		err := s.client.Discovery().RESTClient().Get().AbsPath("/version").Do(pctx).Error()
		cancel()
		s.observe(ctx, "api server", "probe", err)
	}
}
