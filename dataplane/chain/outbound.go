package chain

import (
	"context"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/meshvm/mesh/dataplane/endpoint"
)

// upstream is one service compiled from a table: its policy, its state,
// and (static table) its endpoints.
type upstream struct {
	name string
	svc  *service
	pol  policy
	h    *Handlers
	path path // the service's compiled steps
	// rest is the path after the route step (the whole path when there
	// is none): what runs when a route picks this cluster.
	rest Next

	set   atomic.Pointer[endpointSet]
	setMu sync.Mutex // rebuilds from a live resolver
}

// endpoints returns the endpoint set to pick from: the table's, or the
// live resolver's, rebuilt only when the resolver's answer changed.
func (u *upstream) endpoints(ctx context.Context) (*endpointSet, error) {
	if u.h.table.Static {
		return u.set.Load(), nil
	}
	eps, err := u.h.res.Resolve(ctx, u.name)
	if err != nil {
		return nil, err
	}
	if cur := u.set.Load(); cur != nil && sameSlice(cur.eps, eps) {
		return cur, nil
	}
	u.setMu.Lock()
	defer u.setMu.Unlock()
	if cur := u.set.Load(); cur != nil && sameSlice(cur.eps, eps) {
		return cur, nil
	}
	set, err := u.svc.endpointSet(eps, u.pol.lb)
	if err != nil {
		return nil, err
	}
	u.set.Store(set)
	return set, nil
}

// sameSlice reports whether a and b are the same shared slice: resolvers
// hand out a new slice whenever the endpoints change.
func sameSlice(a, b []endpoint.Endpoint) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// outcome is what a request says about its upstream service, for the
// circuit breaker.
type outcome uint8

const (
	succeeded outcome = iota
	failed
	// abandoned: the request ended without saying anything about the
	// upstream (the caller went away, the mesh refused it).
	abandoned
)
