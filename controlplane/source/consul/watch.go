package consul

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/controlplane/source"
)

// result is one answer of a watched endpoint.
type result[T any] struct {
	val   T
	index uint64
}

// latest holds a watch's newest answer until the sync loop takes it;
// a newer answer replaces an untaken one, so a watch never blocks on a
// busy sync loop and intermediate answers are coalesced.
type latest[T any] struct {
	mu    sync.Mutex
	r     result[T]
	fresh bool
}

func (l *latest[T]) put(v T, index uint64) {
	l.mu.Lock()
	l.r, l.fresh = result[T]{val: v, index: index}, true
	l.mu.Unlock()
}

func (l *latest[T]) take() (result[T], bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.r, l.fresh
	l.r, l.fresh = result[T]{}, false
	return r, ok
}

// watch runs one blocking query on an endpoint forever: each answer with
// a new index goes into box and signals wake. Failures are retried with
// jittered backoff; queries are paced (a short burst, then one per
// MinInterval), so a busy catalog cannot turn a watch into a hot loop.
func watch[T any](ctx context.Context, s *Source, what string, query func(*api.QueryOptions) (T, *api.QueryMeta, error), box *latest[T], wake chan<- struct{}) {
	b := source.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	pace := pacer{every: s.opts.MinInterval, burst: roundBurst}
	var index uint64
	failing := false
	for ctx.Err() == nil {
		if !source.Sleep(ctx, time.Until(pace.ready(time.Now()))) {
			return
		}
		pace.spend()
		qctx, cancel := context.WithTimeout(ctx, s.opts.Wait+s.opts.Wait/16+15*time.Second)
		v, meta, err := query(s.queryOptions(qctx, index, s.opts.Wait))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed(&failing, fmt.Errorf("watch %s: %w", what, err))
			source.Sleep(ctx, b.Next())
			continue
		}
		s.succeeded(&failing, what)
		b.Reset()
		if meta.LastIndex != index || index == 0 {
			index = nextIndex(index, meta.LastIndex)
			box.put(v, meta.LastIndex)
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}
}

// queryOptions is a query under ctx that blocks on index (0: does not
// block) for at most wait.
func (s *Source) queryOptions(ctx context.Context, index uint64, wait time.Duration) *api.QueryOptions {
	q := &api.QueryOptions{AllowStale: s.opts.Stale}
	if index > 0 {
		q.WaitIndex, q.WaitTime = index, wait
	}
	return q.WithContext(ctx)
}

// nextIndex follows Consul's advice on blocking-query indexes: start over
// when the index goes backwards (a restored snapshot, another server),
// never wait on 0.
func nextIndex(prev, last uint64) uint64 {
	if last < prev || last == 0 {
		return 1
	}
	return last
}
