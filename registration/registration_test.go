package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

var consul *meshtest.Consul

func TestMain(m *testing.M) { meshtest.RunWithConsul(m, &consul) }

// startApp serves an app on host: /healthz answers 200, /broken 500.
func startApp(t *testing.T, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("app listen: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/broken", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusInternalServerError) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
}

// runRegistrar runs r until the test ends. It returns Run's cancel and a
// channel closed when Run returns, with its result in *runErr.
func runRegistrar(t *testing.T, r *Registrar) (cancel context.CancelFunc, done <-chan struct{}, runErr *error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	runErr = new(error)
	go func() { *runErr = r.Run(ctx); close(ch) }()
	t.Cleanup(func() {
		cancel()
		<-ch
		_ = r.Deregister(context.Background())
	})
	return cancel, ch, runErr
}

func agentService(id string) (*consulapi.AgentService, error) {
	svc, _, err := consul.Client.Agent().Service(id, nil)
	return svc, err
}

func isNotFound(err error) bool {
	var se consulapi.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

func TestRegisterHealth(t *testing.T) {
	host := meshtest.LoopbackHost(21)
	appPort := startApp(t, host)
	closedPort := meshtest.FreePort(host)

	tests := []struct {
		name       string
		appPort    int
		health     string
		wantStatus string
	}{
		{name: "http healthy", appPort: appPort, health: "/healthz", wantStatus: consulapi.HealthPassing},
		{name: "http health path fails", appPort: appPort, health: "/broken", wantStatus: consulapi.HealthCritical},
		{name: "tcp open", appPort: appPort, wantStatus: consulapi.HealthPassing},
		{name: "tcp closed", appPort: closedPort, wantStatus: consulapi.HealthCritical},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := Spec{
				Service:        "web",
				Node:           "vm" + strconv.Itoa(i),
				AdvertiseAddr:  "127.0.0.21",
				InboundPort:    15006,
				AppAddress:     host,
				AppPort:        tc.appPort,
				AppHealth:      tc.health,
				HealthInterval: 200 * time.Millisecond,
				Tags:           []string{"v1", "canary"},
				Meta:           map[string]string{"owner": "team-a"},
				Locality:       config.Locality{Region: "eu-west", Zone: "eu-west-1a"},
			}
			r := New(consul.Client, spec, time.Second, testLogger(t))
			wantID := "web-vm" + strconv.Itoa(i) + "-" + strconv.Itoa(tc.appPort)
			if r.ID() != wantID {
				t.Fatalf("ID() = %q, want %q", r.ID(), wantID)
			}
			runRegistrar(t, r)
			meshtest.Eventually(t, 5*time.Second, func() error {
				if !r.Registered() {
					return errors.New("not registered yet")
				}
				return nil
			})

			svc, err := agentService(wantID)
			if err != nil {
				t.Fatalf("look up %s: %v", wantID, err)
			}
			if svc.Service != "web" || svc.Address != "127.0.0.21" || svc.Port != 15006 {
				t.Errorf("service = %s at %s:%d, want web at 127.0.0.21:15006", svc.Service, svc.Address, svc.Port)
			}
			if !slices.Equal(svc.Tags, []string{"v1", "canary"}) {
				t.Errorf("tags = %v, want [v1 canary]", svc.Tags)
			}
			wantMeta := map[string]string{
				"owner":              "team-a",
				wire.MetaAppPort:     strconv.Itoa(tc.appPort),
				wire.MetaVersion:     buildinfo.Version,
				wire.MetaNode:        spec.Node,
				wire.MetaZone:        "eu-west-1a",
				wire.MetaRegion:      "eu-west",
				wire.MetaHealthCheck: map[bool]string{true: "http", false: "tcp"}[tc.health != ""],
			}
			for k, v := range wantMeta {
				if svc.Meta[k] != v {
					t.Errorf("meta[%s] = %q, want %q (meta %v)", k, svc.Meta[k], v, svc.Meta)
				}
			}

			// The check must have run (output set) and reached the wanted state.
			meshtest.Eventually(t, 5*time.Second, func() error {
				checks, _, err := consul.Client.Health().Checks("web", &consulapi.QueryOptions{Filter: `ServiceID == "` + wantID + `"`})
				if err != nil {
					return err
				}
				if len(checks) != 1 {
					return fmt.Errorf("%d checks, want 1", len(checks))
				}
				if c := checks[0]; c.Output == "" || c.Status != tc.wantStatus {
					return fmt.Errorf("check %s is %s (%q), want %s", c.CheckID, c.Status, c.Output, tc.wantStatus)
				}
				return nil
			})
		})
	}
}

func TestRestoresLostRegistration(t *testing.T) {
	host := meshtest.LoopbackHost(22)
	appPort := startApp(t, host)
	const resync = 300 * time.Millisecond
	r := New(consul.Client, Spec{
		Service: "orders", Node: "vm-restore", AdvertiseAddr: host, InboundPort: 15006,
		AppAddress: host, AppPort: appPort, AppHealth: "/healthz", HealthInterval: time.Second,
	}, resync, testLogger(t))
	runRegistrar(t, r)
	meshtest.Eventually(t, 5*time.Second, func() error { _, err := agentService(r.ID()); return err })

	for round := range 3 {
		if err := consul.Client.Agent().ServiceDeregister(r.ID()); err != nil {
			t.Fatalf("deregister behind the agent's back: %v", err)
		}
		lost := time.Now()
		meshtest.Eventually(t, resync+time.Second, func() error { _, err := agentService(r.ID()); return err })
		t.Logf("round %d: restored %v after being deregistered (resync %v)", round, time.Since(lost).Round(time.Millisecond), resync)
		meshtest.Eventually(t, time.Second, func() error {
			if !r.Registered() {
				return errors.New("Registered() false after restore")
			}
			return nil
		})
	}
}

func TestDeregisterStaysGone(t *testing.T) {
	host := meshtest.LoopbackHost(23)
	appPort := startApp(t, host)
	const resync = 100 * time.Millisecond

	tests := []struct {
		name string
		// waitRegistered: Deregister after the registration is in Consul;
		// otherwise right after Run starts, racing the first registration.
		waitRegistered bool
	}{
		{name: "after registration", waitRegistered: true},
		{name: "racing the first registration"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(consul.Client, Spec{
				Service: "billing", Node: "vm-dereg" + strconv.Itoa(i), AdvertiseAddr: host, InboundPort: 15006,
				AppAddress: host, AppPort: appPort, HealthInterval: time.Second,
			}, resync, testLogger(t))
			_, done, runErr := runRegistrar(t, r)
			if tc.waitRegistered {
				meshtest.Eventually(t, 5*time.Second, func() error { _, err := agentService(r.ID()); return err })
			}
			if err := r.Deregister(context.Background()); err != nil {
				t.Fatalf("Deregister: %v", err)
			}
			select {
			case <-done:
				if *runErr != nil {
					t.Errorf("Run returned %v after Deregister, want nil", *runErr)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Run still running 2s after Deregister (its ctx is alive)")
			}
			if r.Registered() {
				t.Error("Registered() true after Deregister")
			}
			// Several resync intervals later it is still gone.
			time.Sleep(5 * resync)
			if _, err := agentService(r.ID()); !isNotFound(err) {
				t.Fatalf("after Deregister, look up %s: err = %v, want 404", r.ID(), err)
			}
		})
	}
}

func TestConsulOutage(t *testing.T) {
	host := meshtest.LoopbackHost(24)
	appPort := startApp(t, host)
	rl := meshtest.StartRelay(t, consul.Addr)
	client, err := consulapi.NewClient(&consulapi.Config{Address: rl.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	const resync = 300 * time.Millisecond
	r := New(client, Spec{
		Service: "search", Node: "vm-outage", AdvertiseAddr: host, InboundPort: 15006,
		AppAddress: host, AppPort: appPort, HealthInterval: time.Second,
	}, resync, testLogger(t))

	// Consul unreachable from the start: Run keeps trying.
	rl.Down()
	cancel, done, runErr := runRegistrar(t, r)
	time.Sleep(3 * resync)
	if r.Registered() {
		t.Fatal("Registered() true while consul is unreachable from the start")
	}
	rl.Up(t)
	meshtest.Eventually(t, resync+2*time.Second, func() error { _, err := agentService(r.ID()); return err })

	// Consul goes away and forgets the registration meanwhile (an agent
	// restarted without its data): restored once it is reachable again.
	rl.Down()
	if err := consul.Client.Agent().ServiceDeregister(r.ID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * resync)
	rl.Up(t)
	meshtest.Eventually(t, resync+2*time.Second, func() error { _, err := agentService(r.ID()); return err })

	// Cancelling ctx stops Run without deregistering.
	cancel()
	select {
	case <-done:
		if *runErr != nil {
			t.Errorf("Run = %v, want nil", *runErr)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := agentService(r.ID()); err != nil {
		t.Errorf("registration gone after Run's ctx was cancelled (only Deregister removes it): %v", err)
	}
}

func TestRunOwnsNoGoroutinesAfterReturn(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
	host := meshtest.LoopbackHost(25)
	r := New(consul.Client, Spec{
		Service: "leak", Node: "vm-leak", AdvertiseAddr: host, InboundPort: 15006,
		AppAddress: host, AppPort: startApp(t, host), HealthInterval: time.Second,
	}, 50*time.Millisecond, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if !r.Registered() {
			return errors.New("not registered")
		}
		return nil
	})
	cancel()
	<-done
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A registration left under the same ID by an earlier run (other port,
// tags, meta) is replaced, and a correct one is left alone: resyncs do not
// rewrite it.
func TestReplacesStaleRegistrationOnly(t *testing.T) {
	host := meshtest.LoopbackHost(26)
	appPort := startApp(t, host)
	spec := Spec{
		Service: "cart", Node: "vm-stale", AdvertiseAddr: host, InboundPort: 15006,
		AppAddress: host, AppPort: appPort, HealthInterval: time.Second, Tags: []string{"v2"},
	}
	err := consul.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: spec.ID(), Name: "cart", Address: host, Port: 15999, Tags: []string{"v1"},
		Meta: map[string]string{wire.MetaVersion: "old"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const resync = 100 * time.Millisecond
	var writes atomic.Int32
	log := testLogger(t).Hook(zerolog.HookFunc(func(_ *zerolog.Event, _ zerolog.Level, msg string) {
		if msg == "registered in consul" {
			writes.Add(1)
		}
	}))
	r := New(consul.Client, spec, resync, log)
	runRegistrar(t, r)
	var modifyIndex uint64
	meshtest.Eventually(t, 5*time.Second, func() error {
		svcs, _, err := consul.Client.Catalog().Service("cart", "", &consulapi.QueryOptions{Filter: `ServiceID == "` + spec.ID() + `"`})
		if err != nil {
			return err
		}
		if len(svcs) != 1 || svcs[0].ServicePort != 15006 || !slices.Equal(svcs[0].ServiceTags, []string{"v2"}) || svcs[0].ServiceMeta[wire.MetaVersion] != buildinfo.Version {
			return fmt.Errorf("catalog holds %+v, want port 15006, tags [v2], current version", svcs)
		}
		modifyIndex = svcs[0].ModifyIndex
		return nil
	})
	time.Sleep(5 * resync)
	svcs, _, err := consul.Client.Catalog().Service("cart", "", &consulapi.QueryOptions{Filter: `ServiceID == "` + spec.ID() + `"`})
	if err != nil || len(svcs) != 1 {
		t.Fatalf("catalog: %v, %v", svcs, err)
	}
	if svcs[0].ModifyIndex != modifyIndex {
		t.Errorf("registration changed by resyncs: modify index %d -> %d", modifyIndex, svcs[0].ModifyIndex)
	}
	if n := writes.Load(); n != 1 {
		t.Errorf("registered %d times over 5 resyncs of a correct registration, want 1", n)
	}
}

// A registrar that never reached Consul does not try to deregister on
// stop (no error, no call), and says why its registration fails.
func TestNeverRegisteredIsNotDeregistered(t *testing.T) {
	host := meshtest.LoopbackHost(25)
	dead := net.JoinHostPort(host, strconv.Itoa(meshtest.FreePort(host)))
	client, err := consulapi.NewClient(&consulapi.Config{Address: dead})
	if err != nil {
		t.Fatal(err)
	}
	r := New(client, Spec{Service: "nowhere", Node: "vm-never", AdvertiseAddr: host, InboundPort: 15006,
		AppAddress: host, AppPort: 1}, 100*time.Millisecond, testLogger(t))
	runRegistrar(t, r)
	meshtest.Eventually(t, 5*time.Second, func() error {
		if r.Err() == nil {
			return errors.New("no registration failure yet")
		}
		return nil
	})
	if !strings.Contains(r.Err().Error(), "connection refused") {
		t.Errorf("Err() = %v, want the refused connection", r.Err())
	}
	if err := r.Deregister(context.Background()); err != nil {
		t.Errorf("Deregister of a registration Consul never saw: %v, want nil without a call", err)
	}
}
