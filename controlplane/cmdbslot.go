package controlplane

import (
	"context"
	"sync"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/source/cmdbsource"
)

// cmdbSlot is the CMDB as the reconciler sees it: one source named "cmdb"
// whose poller a reload can replace. The reconciler keeps the last view
// the old poller sent until the new one delivers, so a restarted poller
// never blanks the metadata. With no CMDB configured the slot sends one
// empty view: the first model does not wait for it, and a reload that
// removes control.cmdb.url drops the CMDB's metadata.
type cmdbSlot struct {
	log zerolog.Logger

	mu sync.Mutex
	// want is the poller the slot should run (nil: CMDB disabled);
	// running is the one Run is running now.
	want, running *cmdbsource.Source
	// folded is the status of the pollers replaced so far, so counters
	// keep counting across reloads.
	folded source.Status
	// swapped is closed (and replaced) when want changes.
	swapped chan struct{}
}

func newCMDBSlot(log zerolog.Logger, s *cmdbsource.Source) *cmdbSlot {
	return &cmdbSlot{log: log, want: s, swapped: make(chan struct{})}
}

// Name implements source.Source.
func (s *cmdbSlot) Name() string { return cmdbsource.Name }

// enabled reports whether a CMDB is configured; metrics and /config_dump
// leave a disabled CMDB out.
func (s *cmdbSlot) enabled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.want != nil
}

// Status implements source.Source: the replaced pollers' errors plus the
// running one's, and the last success of whichever delivered last.
func (s *cmdbSlot) Status() source.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.folded
	if s.running != nil {
		cur := s.running.Status()
		st.Errors += cur.Errors
		if !cur.LastSuccess.IsZero() {
			st.LastSuccess = cur.LastSuccess
		}
		st.LastError = cur.LastError
	}
	return st
}

// swap makes next (nil: no CMDB) the poller to run; Run stops the old one
// and starts next at once.
func (s *cmdbSlot) swap(next *cmdbsource.Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = next
	close(s.swapped)
	s.swapped = make(chan struct{})
}

// Run implements source.Source: it runs the wanted poller until ctx is
// done, replacing it on each swap.
func (s *cmdbSlot) Run(ctx context.Context, out chan<- model.View) error {
	for {
		s.mu.Lock()
		inner, swapped := s.want, s.swapped
		s.running = inner
		s.mu.Unlock()

		ictx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if inner == nil {
				select {
				case out <- model.View{}:
				case <-ictx.Done():
				}
				return
			}
			if err := inner.Run(ictx, out); err != nil {
				s.log.Error().Err(err).Msg("cmdb poller stopped")
			}
		}()
		select {
		case <-ctx.Done():
		case <-swapped:
		}
		cancel()
		<-done
		s.fold()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// fold adds the stopped poller's status to folded.
func (s *cmdbSlot) fold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running == nil {
		return
	}
	st := s.running.Status()
	s.folded.Errors += st.Errors
	if !st.LastSuccess.IsZero() {
		s.folded.LastSuccess = st.LastSuccess
	}
	s.folded.LastError = st.LastError
	s.running = nil
}
