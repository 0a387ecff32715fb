package controlplane_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/meshtest"
)

// TestStopLeavesNoGoroutines runs a control plane against the real Consul
// with an ADS client connected, stops it, and checks that every goroutine
// it started (sources, blocking queries, reconcile, xDS streams, servers)
// has ended.
func TestStopLeavesNoGoroutines(t *testing.T) {
	register(t, regOf("leak-1", "leak", "127.0.0.41", 15006, "z1"), "passing")
	before := goleak.IgnoreCurrent()

	cfg := config.Default()
	cfg.Consul.Addr = testConsul.Addr
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.Debounce = 20 * time.Millisecond
	c, err := controlplane.New(cfg, zerolog.Nop(), controlplane.Options{
		Consul: consul.Options{Wait: 5 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	meshtest.Eventually(t, 15*time.Second, func() error {
		if !c.Ready() {
			return errors.New("not ready")
		}
		return nil
	})

	// A client mid-stream when the control plane stops.
	cctx, ccancel := context.WithCancel(context.Background())
	client := dialADSContext(t, cctx, cfg.Control.XDSAddr, agentNode("vm-leak-1", "leak", 8080))
	client.subscribe(resourcev3.ClusterType, nil)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("control plane did not stop in 10s")
	}
	ccancel()
	client.close()
	goleak.VerifyNone(t, before)
}
