// Package registry keeps governance state (token buckets, breaker windows,
// outlier state, in-flight counters) by key — a service name or an
// endpoint address — across config pushes. A push uses each key its new
// config has: an entry that exists keeps its state and gets the new
// parameters in place, a missing one is created; entries the push did not
// use are dropped at its end. The request path never looks anything up
// here: the handler chain built for a push holds the values themselves.
package registry

import (
	"fmt"
	"sync"
)

// Registry maps keys K to state V configured by parameters P.
type Registry[K comparable, P, V any] struct {
	create func(key K, params P) (V, error)
	update func(v V, params P) error

	pushMu sync.Mutex // one push at a time
	mu     sync.Mutex // guards entries and gen
	gen    uint64
	entry  map[K]*entry[V]
}

type entry[V any] struct {
	v    V
	used uint64 // the push that last used it
}

// New returns an empty registry. create makes the state of a new key;
// update applies new parameters to existing state in place (it may be nil
// when the state has no parameters).
func New[K comparable, P, V any](create func(key K, params P) (V, error), update func(v V, params P) error) *Registry[K, P, V] {
	return &Registry[K, P, V]{create: create, update: update, entry: make(map[K]*entry[V])}
}

// Use gets or creates the state of one key within a push.
type Use[K comparable, P, V any] func(key K, params P) (V, error)

// Push runs one config push. fn calls use for every key the new config
// has and gets the state to build its handler chain with. When fn returns
// nil, entries it did not use are removed and returned, so that the caller
// can stop them once the new chain is in place. When fn fails nothing is
// removed (parameters already applied stay applied, so validate a config
// before pushing it). Pushes are serialized.
func (r *Registry[K, P, V]) Push(fn func(use Use[K, P, V]) error) (dropped []V, err error) {
	r.pushMu.Lock()
	defer r.pushMu.Unlock()
	r.mu.Lock()
	r.gen++
	gen := r.gen
	r.mu.Unlock()
	use := func(key K, params P) (V, error) {
		r.mu.Lock()
		e, ok := r.entry[key]
		r.mu.Unlock()
		if ok {
			if r.update != nil {
				if err := r.update(e.v, params); err != nil {
					var zero V
					return zero, fmt.Errorf("update %v: %w", key, err)
				}
			}
		} else {
			v, err := r.create(key, params)
			if err != nil {
				var zero V
				return zero, fmt.Errorf("create %v: %w", key, err)
			}
			e = &entry[V]{v: v}
			r.mu.Lock()
			r.entry[key] = e
			r.mu.Unlock()
		}
		r.mu.Lock()
		e.used = gen
		r.mu.Unlock()
		return e.v, nil
	}
	if err := fn(use); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entry {
		if e.used != gen {
			dropped = append(dropped, e.v)
			delete(r.entry, k)
		}
	}
	return dropped, nil
}

// Ensure returns the state of key, creating it with params when the
// registry does not hold it, between pushes: for keys first met on the
// request path (a service called for the first time when endpoints come
// from live discovery). Existing state is returned as it is, without
// params. A created entry counts as used by the latest push, so the next
// push keeps it only if it uses the key.
func (r *Registry[K, P, V]) Ensure(key K, params P) (V, error) {
	if v, ok := r.Get(key); ok {
		return v, nil
	}
	r.pushMu.Lock() // not during a push: it would drop the entry at its end
	defer r.pushMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.entry[key]; ok {
		return e.v, nil
	}
	v, err := r.create(key, params)
	if err != nil {
		var zero V
		return zero, fmt.Errorf("create %v: %w", key, err)
	}
	r.entry[key] = &entry[V]{v: v, used: r.gen}
	return v, nil
}

// Get returns the state of key, if any (for admin pages and tests).
func (r *Registry[K, P, V]) Get(key K) (V, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entry[key]
	if !ok {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Len returns the number of keys held.
func (r *Registry[K, P, V]) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entry)
}

// Range calls fn for every key and its state, in no particular order,
// until fn returns false. fn must not call back into the registry.
func (r *Registry[K, P, V]) Range(fn func(key K, v V) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entry {
		if !fn(k, e.v) {
			return
		}
	}
}
