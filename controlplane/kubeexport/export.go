// Package kubeexport makes the mesh's VM services reachable from
// Kubernetes by name: for each service with endpoints from Consul it keeps
// a selector-less Service and its EndpointSlices (labelled managed-by
// mesh) in one namespace, so pods call payments.<namespace> through
// cluster DNS. It writes only objects that carry its label, deletes only
// those (by UID), and leaves a Service of the same name that it did not
// create alone, reporting the conflict.
package kubeexport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	kubeclient "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/source/kubernetes"
)

// Options tune the exporter; zero values take defaults.
type Options struct {
	// Resync is how often the namespace is reconciled without a change
	// (default 5m), repairing edits made by others to mesh's objects.
	Resync time.Duration
	// MinBackoff and MaxBackoff bound the retry wait after a failed
	// round (100ms, 15s).
	MinBackoff, MaxBackoff time.Duration
}

// Exporter keeps the export namespace in line with the latest model.
type Exporter struct {
	client  kubeclient.Interface
	ns      string
	log     zerolog.Logger
	opts    Options
	metrics *metrics

	want atomic.Pointer[model.Model]
	wake chan struct{}
	// conflicts and invalid are the names last reported, so each is
	// logged once; used by the Run goroutine only.
	conflicts, invalid map[string]bool
}

// New returns an exporter writing into namespace ns; it starts nothing.
func New(client kubeclient.Interface, ns string, log zerolog.Logger, reg prometheus.Registerer, opts Options) *Exporter {
	if opts.Resync <= 0 {
		opts.Resync = 5 * time.Minute
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 15 * time.Second
	}
	return &Exporter{
		client: client, ns: ns, log: log, opts: opts, metrics: newMetrics(reg),
		wake: make(chan struct{}, 1), conflicts: map[string]bool{}, invalid: map[string]bool{},
	}
}

// Update hands the exporter the model being served; it never blocks.
func (e *Exporter) Update(m *model.Model) {
	e.want.Store(m)
	e.poke()
}

func (e *Exporter) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run watches the export namespace and reconciles it after each model
// update, each change to its objects, and every Resync, until ctx is done.
// A failed round is retried with backoff; nothing is written before the
// first model arrives.
func (e *Exporter) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(e.client, 0, informers.WithNamespace(e.ns))
	svcInf := f.Core().V1().Services()
	sliceInf := f.Discovery().V1().EndpointSlices()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { e.poke() },
		UpdateFunc: func(any, any) { e.poke() },
		DeleteFunc: func(any) { e.poke() },
	}
	if _, err := svcInf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("export services informer: %w", err)
	}
	if _, err := sliceInf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("export endpointslices informer: %w", err)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced) {
		return nil
	}
	e.log.Info().Str("namespace", e.ns).Msg("exporting consul services into kubernetes")
	backoff := source.Backoff{Min: e.opts.MinBackoff, Max: e.opts.MaxBackoff}
	resync := time.NewTicker(e.opts.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		wait := time.Duration(-1)
		if m := e.want.Load(); m != nil {
			if err := e.reconcile(ctx, m, svcInf.Lister().Services(e.ns).List, sliceInf.Lister().EndpointSlices(e.ns).List); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				e.metrics.errors.Inc()
				wait = backoff.Next()
				e.log.Warn().Err(err).Dur("retry_in", wait).Msg("kubernetes export incomplete; retrying")
			} else {
				backoff.Reset()
			}
		}
		retry.Stop()
		if wait >= 0 {
			retry.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
		case <-resync.C:
		case <-retry.C:
		}
	}
}

type (
	listServices func(labels.Selector) ([]*corev1.Service, error)
	listSlices   func(labels.Selector) ([]*discoveryv1.EndpointSlice, error)
)

// ours reports whether mesh created o.
func ours(o metav1.Object) bool {
	return o.GetLabels()[kubernetes.LabelManagedBy] == kubernetes.ManagedBy
}

// reconcile makes the namespace match m: one round of creates, updates and
// deletes of mesh's own objects. It returns the failures of the round.
func (e *Exporter) reconcile(ctx context.Context, m *model.Model, lsvc listServices, lsl listSlices) error {
	desired, invalid := Desired(m, e.ns)
	e.reportInvalid(invalid)
	svcList, err := lsvc(labels.Everything())
	if err != nil {
		return fmt.Errorf("list services in %s: %w", e.ns, err)
	}
	sliceList, err := lsl(labels.Everything())
	if err != nil {
		return fmt.Errorf("list endpointslices in %s: %w", e.ns, err)
	}
	current := map[string]*corev1.Service{}
	for _, s := range svcList {
		current[s.Name] = s
	}
	ourSlices := map[string]map[string]*discoveryv1.EndpointSlice{}
	for _, sl := range sliceList {
		if !ours(sl) {
			continue
		}
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if ourSlices[svc] == nil {
			ourSlices[svc] = map[string]*discoveryv1.EndpointSlice{}
		}
		ourSlices[svc][sl.Name] = sl
	}

	var errs []error
	conflicts := map[string]bool{}
	exported := 0
	for _, name := range slices.Sorted(maps.Keys(desired)) {
		d := desired[name]
		cur := current[name]
		have := ourSlices[name]
		delete(ourSlices, name)
		if cur != nil && !ours(cur) {
			// Slices of mesh's would feed someone else's Service.
			conflicts[name] = true
			for _, sl := range have {
				if err := e.deleteSlice(ctx, sl); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if cur == nil {
			created, err := e.client.CoreV1().Services(e.ns).Create(ctx, d.service, metav1.CreateOptions{FieldManager: kubernetes.ManagedBy})
			if apierrors.IsAlreadyExists(err) {
				continue // not in the cache yet; the next round decides
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("create service %s/%s: %w", e.ns, name, err))
				continue
			}
			e.metrics.writes.WithLabelValues("create").Inc()
			e.log.Info().Str("service", name).Msg("kubernetes service created for a consul service")
			cur = created
		} else if !serviceMatches(cur, d.service) {
			upd := cur.DeepCopy()
			upd.Labels = merged(upd.Labels, d.service.Labels)
			upd.Annotations = merged(upd.Annotations, d.service.Annotations)
			upd.Spec.Ports = d.service.Spec.Ports
			upd.Spec.Selector = nil
			next, err := e.client.CoreV1().Services(e.ns).Update(ctx, upd, metav1.UpdateOptions{FieldManager: kubernetes.ManagedBy})
			if err != nil {
				errs = append(errs, fmt.Errorf("update service %s/%s: %w", e.ns, name, err))
				continue
			}
			e.metrics.writes.WithLabelValues("update").Inc()
			cur = next
		}
		exported++
		if err := e.syncSlices(ctx, cur, d.slices, have); err != nil {
			errs = append(errs, err)
		}
	}
	// What mesh created and no longer wants: slices first, then the Service.
	for svc, sls := range ourSlices {
		for _, sl := range sls {
			if err := e.deleteSlice(ctx, sl); err != nil {
				errs = append(errs, err)
			}
		}
		if cur := current[svc]; cur != nil && ours(cur) {
			delete(current, svc)
			if err := e.deleteService(ctx, cur); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for name, cur := range current {
		if _, want := desired[name]; !want && ours(cur) {
			if err := e.deleteService(ctx, cur); err != nil {
				errs = append(errs, err)
			}
		}
	}
	e.reportConflicts(conflicts)
	e.metrics.services.Set(float64(exported))
	return errors.Join(errs...)
}

func (e *Exporter) syncSlices(ctx context.Context, svc *corev1.Service, want []*discoveryv1.EndpointSlice, have map[string]*discoveryv1.EndpointSlice) error {
	owner := metav1.OwnerReference{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID, Controller: ptr.To(true)}
	var errs []error
	for _, sl := range want {
		sl.OwnerReferences = []metav1.OwnerReference{owner}
		cur := have[sl.Name]
		delete(have, sl.Name)
		switch {
		case cur == nil:
			if _, err := e.client.DiscoveryV1().EndpointSlices(e.ns).Create(ctx, sl, metav1.CreateOptions{FieldManager: kubernetes.ManagedBy}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("create endpointslice %s/%s: %w", e.ns, sl.Name, err))
				continue
			}
			e.metrics.writes.WithLabelValues("create").Inc()
		case !sliceMatches(cur, sl):
			upd := cur.DeepCopy()
			upd.Labels = merged(upd.Labels, sl.Labels)
			upd.Annotations = merged(upd.Annotations, sl.Annotations)
			upd.OwnerReferences = sl.OwnerReferences
			upd.Ports, upd.Endpoints = sl.Ports, sl.Endpoints
			if _, err := e.client.DiscoveryV1().EndpointSlices(e.ns).Update(ctx, upd, metav1.UpdateOptions{FieldManager: kubernetes.ManagedBy}); err != nil {
				errs = append(errs, fmt.Errorf("update endpointslice %s/%s: %w", e.ns, sl.Name, err))
				continue
			}
			e.metrics.writes.WithLabelValues("update").Inc()
		}
	}
	for _, sl := range have {
		if err := e.deleteSlice(ctx, sl); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteService deletes a Service mesh created, only if it is still that
// object (same UID).
func (e *Exporter) deleteService(ctx context.Context, s *corev1.Service) error {
	err := e.client.CoreV1().Services(e.ns).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete service %s/%s: %w", e.ns, s.Name, err)
	}
	e.metrics.writes.WithLabelValues("delete").Inc()
	e.log.Info().Str("service", s.Name).Msg("kubernetes service removed: its consul service is gone")
	return nil
}

func (e *Exporter) deleteSlice(ctx context.Context, sl *discoveryv1.EndpointSlice) error {
	err := e.client.DiscoveryV1().EndpointSlices(e.ns).Delete(ctx, sl.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sl.UID}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete endpointslice %s/%s: %w", e.ns, sl.Name, err)
	}
	e.metrics.writes.WithLabelValues("delete").Inc()
	return nil
}

// serviceMatches reports whether cur already is what want says (labels
// and annotations mesh sets, ports, no selector).
func serviceMatches(cur, want *corev1.Service) bool {
	return contains(cur.Labels, want.Labels) && contains(cur.Annotations, want.Annotations) &&
		len(cur.Spec.Selector) == 0 && equality.Semantic.DeepEqual(cur.Spec.Ports, want.Spec.Ports)
}

func sliceMatches(cur, want *discoveryv1.EndpointSlice) bool {
	return contains(cur.Labels, want.Labels) && contains(cur.Annotations, want.Annotations) &&
		equality.Semantic.DeepEqual(cur.OwnerReferences, want.OwnerReferences) &&
		equality.Semantic.DeepEqual(cur.Ports, want.Ports) && equality.Semantic.DeepEqual(cur.Endpoints, want.Endpoints)
}

// contains reports whether every key of sub has its value in m.
func contains(m, sub map[string]string) bool {
	for k, v := range sub {
		if got, ok := m[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// merged returns m with over's keys set, leaving others' keys alone.
func merged(m, over map[string]string) map[string]string {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, over)
	return out
}

func (e *Exporter) reportConflicts(now map[string]bool) {
	for name := range now {
		if !e.conflicts[name] {
			e.log.Warn().Str("service", name).Str("namespace", e.ns).
				Msg("a kubernetes service of this name exists and was not created by mesh; left alone, the consul service is not exported")
		}
	}
	e.conflicts = now
	e.metrics.conflicts.Set(float64(len(now)))
}

func (e *Exporter) reportInvalid(names []string) {
	now := map[string]bool{}
	for _, n := range names {
		now[n] = true
		if !e.invalid[n] {
			e.log.Warn().Str("service", n).Msg("consul service name is not a valid kubernetes service name (RFC 1035 label); not exported")
		}
	}
	e.invalid = now
}
