package daemon_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/meshvm/mesh/daemon"
)

// TestGroupKeepsTheFirstFailure: cancellations and closed servers are
// not failures; the first real one is kept with its name, and many
// failing at once never block.
func TestGroupKeepsTheFirstFailure(t *testing.T) {
	g := daemon.NewGroup()
	g.Go("canceled", func() error { return context.Canceled })
	g.Go("closed", func() error { return http.ErrServerClosed })
	g.Wait()
	select {
	case <-g.Failed():
		t.Fatalf("failed on %v", g.Err())
	default:
	}
	release := make(chan struct{})
	for range 50 {
		g.Go("xds client", func() error { <-release; return errors.New("boom") })
	}
	close(release)
	<-g.Failed()
	g.Wait()
	if err := g.Err(); err == nil || !strings.HasPrefix(err.Error(), "xds client: boom") {
		t.Fatalf("Err = %v, want the first failure named", err)
	}
}
