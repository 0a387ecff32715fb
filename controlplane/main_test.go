package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/meshtest"
)

// testConsul is the package's Consul dev agent.
var testConsul *meshtest.Consul

func TestMain(m *testing.M) {
	if os.Getenv(envClientsAddr) != "" {
		os.Exit(adsClientsMain()) // the ADS clients of BenchmarkEndpointChange
	}
	meshtest.RunWithConsul(m, &testConsul)
}

// plane is a running in-process `mesh control`.
type plane struct {
	*controlplane.Control
	xdsAddr, adminAddr string
	logs               *meshtest.SyncBuffer
	// stop ends it (as at the end of the test) and waits.
	stop func()
}

// startPlane runs a control plane on 127.0.0.1 free ports against
// consulAddr (the test Consul by default) until the test ends.
func startPlane(t *testing.T, consulAddr string, edit func(*config.Config)) *plane {
	t.Helper()
	p := launchPlane(t, consulAddr, edit)
	meshtest.Eventually(t, 15*time.Second, func() error {
		resp, err := http.Get("http://" + p.adminAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %s", resp.Status)
		}
		return nil
	})
	return p
}

// launchPlane is startPlane without waiting for /ready.
func launchPlane(t *testing.T, consulAddr string, edit func(*config.Config)) *plane {
	t.Helper()
	cfg := config.Default()
	cfg.Consul.Addr = consulAddr
	if consulAddr == "" {
		cfg.Consul.Addr = testConsul.Addr
	}
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.Debounce = 20 * time.Millisecond
	cfg.Control.CA.Dir = filepath.Join(t.TempDir(), "ca")
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(config.RoleControl); err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &meshtest.SyncBuffer{}
	log := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.DebugLevel)
	c, err := controlplane.New(cfg, log, controlplane.Options{
		Consul:    consul.Options{Wait: 5 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		FirstWait: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("control plane run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("control plane did not stop in 10s")
		}
	})
	t.Cleanup(stop)
	return &plane{Control: c, xdsAddr: cfg.Control.XDSAddr, adminAddr: cfg.Control.AdminAddr, logs: logs, stop: stop}
}

// register adds a service instance to Consul through its agent API, with
// a TTL check in state (passing, warning, critical) when check != "", and
// removes it when the test ends.
type consulRegistration = consulapi.AgentServiceRegistration

func register(t *testing.T, r consulRegistration, check string) {
	t.Helper()
	if check != "" {
		r.Check = &consulapi.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "10m", Status: check}
	}
	if err := testConsul.Client.Agent().ServiceRegister(&r); err != nil {
		t.Fatalf("register %s: %v", r.ID, err)
	}
	t.Cleanup(func() { _ = testConsul.Client.Agent().ServiceDeregister(r.ID) })
}

func deregister(t *testing.T, id string) {
	t.Helper()
	if err := testConsul.Client.Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("deregister %s: %v", id, err)
	}
}

func setCheck(t *testing.T, id, status string) {
	t.Helper()
	if err := testConsul.Client.Agent().UpdateTTL("ttl-"+id, "set by test", status); err != nil {
		t.Fatalf("update check of %s: %v", id, err)
	}
}

// healthServer is a real gRPC server (the standard health service) on
// host; it answers SERVING for the service name "who-"+name, so a caller
// can tell which instance answered.
func healthServer(t *testing.T, host, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus("who-"+name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, h)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// httpGet returns the status code of a GET.
func httpGet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
