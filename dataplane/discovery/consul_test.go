package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/meshtest"
)

var consul *meshtest.Consul

func TestMain(m *testing.M) { meshtest.RunWithConsul(m, &consul) }

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
}

// instance is one service instance registered straight through the API,
// as another VM's agent would, with a TTL check the test drives.
type instance struct {
	id, service, addr string
	port              int
	meta              map[string]string
	weight            int
	passing           bool
}

func (in instance) checkID() string { return in.id + ":ttl" }

func register(t testing.TB, c *consulapi.Client, in instance) {
	t.Helper()
	status := consulapi.HealthCritical
	if in.passing {
		status = consulapi.HealthPassing
	}
	reg := &consulapi.AgentServiceRegistration{
		ID: in.id, Name: in.service, Address: in.addr, Port: in.port, Meta: in.meta,
		Check: &consulapi.AgentServiceCheck{CheckID: in.checkID(), TTL: "1h", Status: status},
	}
	if in.weight > 0 {
		reg.Weights = &consulapi.AgentWeights{Passing: in.weight, Warning: 1}
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register %s: %v", in.id, err)
	}
	t.Cleanup(func() { _ = consul.Client.Agent().ServiceDeregister(in.id) })
}

func setHealth(t testing.TB, in instance, status string) {
	t.Helper()
	if err := consul.Client.Agent().UpdateTTL(in.checkID(), "set by test", status); err != nil {
		t.Fatalf("set %s %s: %v", in.id, status, err)
	}
}

// startDiscovery runs a resolver until the test ends.
func startDiscovery(t testing.TB, client *consulapi.Client, opts ...Option) *Consul {
	t.Helper()
	d := NewConsul(client, testLogger(t), opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

func resolve(d *Consul, service string) ([]endpoint.Endpoint, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.Resolve(ctx, service)
}

func addrs(eps []endpoint.Endpoint) []string {
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.Addr
	}
	return out
}

// wantAddrs polls Resolve until it returns exactly want (in order).
func wantAddrs(t testing.TB, d *Consul, service string, timeout time.Duration, want ...string) {
	t.Helper()
	meshtest.Eventually(t, timeout, func() error {
		eps, err := resolve(d, service)
		if err != nil {
			return err
		}
		if got := addrs(eps); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			return fmt.Errorf("%s resolves to %v, want %v", service, got, want)
		}
		return nil
	})
}

func TestResolve(t *testing.T) {
	zoned := map[string]string{"mesh_zone": "eu-west-1a", "mesh_region": "eu-west", "owner": "team-a"}
	for _, in := range []instance{
		{id: "orders-a", service: "orders", addr: "127.0.0.31", port: 15006, meta: zoned, weight: 3, passing: true},
		{id: "orders-b", service: "orders", port: 15007, passing: true}, // no address: the node's
		{id: "orders-c", service: "orders", addr: "127.0.0.33", port: 15006, passing: false},
		{id: "sick-a", service: "sick", addr: "127.0.0.34", port: 15006, passing: false},
	} {
		register(t, consul.Client, in)
	}
	d := startDiscovery(t, consul.Client)

	tests := []struct {
		name    string
		service string
		want    []endpoint.Endpoint
		wantErr error
	}{
		{
			name:    "passing instances only, with locality, meta, weight",
			service: "orders",
			want: []endpoint.Endpoint{
				{Addr: "127.0.0.1:15007", Node: "meshtest", Weight: 1, Meta: map[string]string{}},
				{Addr: "127.0.0.31:15006", Node: "meshtest", Region: "eu-west", Zone: "eu-west-1a", Weight: 3, Meta: zoned},
			},
		},
		{name: "exists, none healthy", service: "sick", want: []endpoint.Endpoint{}},
		{name: "unknown service", service: "no-such-service", wantErr: endpoint.ErrUnknownService},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 2 { // the first lookup starts the watch, the second answers from memory
				got, err := resolve(d, tc.service)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("lookup %d: err = %v, want %v", i, err, tc.wantErr)
				}
				if tc.wantErr != nil {
					continue
				}
				for j := range got { // Consul returns nil or empty meta; compare content
					if got[j].Meta == nil {
						got[j].Meta = map[string]string{}
					}
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("lookup %d:\n got %+v\nwant %+v", i, got, tc.want)
				}
			}
		})
	}

	snap := d.Snapshot()
	if len(snap["orders"]) != 2 || len(snap["sick"]) != 0 {
		t.Errorf("Snapshot() = %+v, want orders with 2 endpoints and sick with 0", snap)
	}
	if _, ok := snap["no-such-service"]; ok {
		t.Error("Snapshot() lists a service that does not exist")
	}
}

func TestHealthChangesFollowed(t *testing.T) {
	a := instance{id: "pay-a", service: "payments", addr: "127.0.0.41", port: 15006, passing: true}
	b := instance{id: "pay-b", service: "payments", addr: "127.0.0.42", port: 15006, passing: true}
	register(t, consul.Client, a)
	register(t, consul.Client, b)
	c := instance{id: "pay-c", service: "payments", addr: "127.0.0.43", port: 15006, passing: true}
	d := startDiscovery(t, consul.Client)
	wantAddrs(t, d, "payments", time.Second, "127.0.0.41:15006", "127.0.0.42:15006")
	parent := t

	tests := []struct {
		name   string
		change func(t *testing.T)
		want   []string
	}{
		{name: "check goes critical", change: func(t *testing.T) { setHealth(t, a, consulapi.HealthCritical) }, want: []string{"127.0.0.42:15006"}},
		{name: "check passes again", change: func(t *testing.T) { setHealth(t, a, consulapi.HealthPassing) }, want: []string{"127.0.0.41:15006", "127.0.0.42:15006"}},
		{name: "warning is not passing", change: func(t *testing.T) { setHealth(t, b, consulapi.HealthWarning) }, want: []string{"127.0.0.41:15006"}},
		{name: "new instance", change: func(*testing.T) { register(parent, consul.Client, c) }, want: []string{"127.0.0.41:15006", "127.0.0.43:15006"}},
		{name: "everything critical", change: func(t *testing.T) {
			setHealth(t, a, consulapi.HealthCritical)
			setHealth(t, c, consulapi.HealthCritical)
		}, want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			tc.change(t)
			// Consul knows at once (a TTL update); the resolver must follow within ~1s.
			wantAddrs(t, d, "payments", time.Second, tc.want...)
			t.Logf("followed in %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

// An instance whose real HTTP health check starts failing drops out once
// Consul's check notices.
func TestHTTPCheckFails(t *testing.T) {
	host := meshtest.LoopbackHost(44)
	var healthy atomic.Bool
	healthy.Store(true)
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !healthy.Load() {
			http.Error(w, "unhealthy", http.StatusServiceUnavailable)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	appPort := ln.Addr().(*net.TCPAddr).Port

	const interval = 200 * time.Millisecond
	err = consul.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: "catalog-http", Name: "catalogsvc", Address: host, Port: 15006,
		Check: &consulapi.AgentServiceCheck{
			HTTP: "http://" + net.JoinHostPort(host, strconv.Itoa(appPort)) + "/health", Interval: interval.String(), Timeout: "1s",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = consul.Client.Agent().ServiceDeregister("catalog-http") })
	d := startDiscovery(t, consul.Client)
	wantAddrs(t, d, "catalogsvc", 5*time.Second, host+":15006")

	healthy.Store(false)
	start := time.Now()
	meshtest.Eventually(t, 5*time.Second, func() error {
		checks, _, err := consul.Client.Health().Checks("catalogsvc", nil)
		if err != nil {
			return err
		}
		if len(checks) != 1 || checks[0].Status != consulapi.HealthCritical {
			return fmt.Errorf("consul has not noticed yet: %v", checks)
		}
		return nil
	})
	noticed := time.Now()
	wantAddrs(t, d, "catalogsvc", time.Second, []string{}...)
	t.Logf("consul noticed %v after the app turned unhealthy (check interval %v); removed %v after that",
		noticed.Sub(start).Round(time.Millisecond), interval, time.Since(noticed).Round(time.Millisecond))
}

func TestServiceAppearsAndLeaves(t *testing.T) {
	d := startDiscovery(t, consul.Client)
	if _, err := resolve(d, "late"); !errors.Is(err, endpoint.ErrUnknownService) {
		t.Fatalf("before registration: err = %v, want ErrUnknownService", err)
	}
	in := instance{id: "late-a", service: "late", addr: "127.0.0.51", port: 15006, passing: true}
	register(t, consul.Client, in)
	wantAddrs(t, d, "late", 2*time.Second, "127.0.0.51:15006")

	if err := consul.Client.Agent().ServiceDeregister(in.id); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 2*time.Second, func() error {
		eps, err := resolve(d, "late")
		if !errors.Is(err, endpoint.ErrUnknownService) {
			return fmt.Errorf("after deregistration: %v, %v; want ErrUnknownService", addrs(eps), err)
		}
		return nil
	})
	if _, ok := d.Snapshot()["late"]; ok {
		t.Error("a service that left the catalog keeps its watch")
	}
}

// Consul goes away (every connection cut and refused): the last good
// answer keeps serving, and changes made meanwhile arrive once it is back.
func TestConsulOutageKeepsLastGood(t *testing.T) {
	a := instance{id: "inv-a", service: "inventory", addr: "127.0.0.61", port: 15006, passing: true}
	b := instance{id: "inv-b", service: "inventory", addr: "127.0.0.62", port: 15006, passing: true}
	register(t, consul.Client, a)
	register(t, consul.Client, b)
	register(t, consul.Client, instance{id: "idle-a", service: "idle", addr: "127.0.0.63", port: 15006, passing: true})
	rl := meshtest.StartRelay(t, consul.Addr)
	client, err := consulapi.NewClient(&consulapi.Config{Address: rl.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	const firstWait = 300 * time.Millisecond
	d := startDiscovery(t, client, WithFirstWait(firstWait), WithMaxBackoff(300*time.Millisecond))
	wantAddrs(t, d, "inventory", 2*time.Second, "127.0.0.61:15006", "127.0.0.62:15006")
	meshtest.Eventually(t, 2*time.Second, func() error {
		if !d.known("idle") {
			return errors.New("the catalog watch does not know service idle yet")
		}
		return nil
	})

	rl.Down()
	setHealth(t, a, consulapi.HealthCritical)
	for range 10 {
		eps, err := resolve(d, "inventory")
		if err != nil || len(eps) != 2 {
			t.Fatalf("during the outage: %v, %v; want the last good 2 endpoints", addrs(eps), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A service known to exist but never asked for cannot be answered:
	// its first lookup fails as soon as Consul does; a name the last good
	// catalog does not hold is still unknown.
	start := time.Now()
	if _, err := d.Resolve(context.Background(), "idle"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("first lookup of idle during the outage: err = %v, want ErrUnavailable", err)
	}
	if el := time.Since(start); el > firstWait {
		t.Errorf("first lookup during the outage took %v, bound is %v", el, firstWait)
	}
	if _, err := resolve(d, "never-registered"); !errors.Is(err, endpoint.ErrUnknownService) {
		t.Errorf("unknown name during the outage: err = %v, want ErrUnknownService", err)
	}

	rl.Up(t)
	wantAddrs(t, d, "inventory", 3*time.Second, "127.0.0.62:15006")
}

// Consul is down when discovery starts: lookups fail fast (no request
// waits for a Consul that is known to fail), and succeed once it is back.
func TestConsulDownAtStart(t *testing.T) {
	register(t, consul.Client, instance{id: "boot-a", service: "boot", addr: "127.0.0.65", port: 15006, passing: true})
	rl := meshtest.StartRelay(t, consul.Addr)
	rl.Down()
	client, err := consulapi.NewClient(&consulapi.Config{Address: rl.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	d := startDiscovery(t, client, WithMaxBackoff(300*time.Millisecond))
	for i := range 3 {
		start := time.Now()
		_, err := d.Resolve(context.Background(), "boot")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("lookup %d with consul down: err = %v, want ErrUnavailable", i, err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("lookup %d with consul down took %v, want a fast failure", i, el)
		}
	}
	rl.Up(t)
	wantAddrs(t, d, "boot", 3*time.Second, "127.0.0.65:15006")
}

// A Consul that is stopped for good: the resolver keeps its last answer.
func TestConsulStoppedKeepsLastGood(t *testing.T) {
	own, err := meshtest.StartConsul()
	if err != nil {
		t.Fatalf("start a second consul: %v", err)
	}
	t.Cleanup(own.Stop)
	register(t, own.Client, instance{id: "ship-a", service: "shipping", addr: "127.0.0.71", port: 15006, passing: true})
	d := startDiscovery(t, own.Client, WithMaxBackoff(200*time.Millisecond))
	wantAddrs(t, d, "shipping", 2*time.Second, "127.0.0.71:15006")

	own.Stop()
	time.Sleep(500 * time.Millisecond) // several failed retries
	eps, err := resolve(d, "shipping")
	if err != nil || len(eps) != 1 || eps[0].Addr != "127.0.0.71:15006" {
		t.Fatalf("after consul stopped: %v, %v; want the last good [127.0.0.71:15006]", addrs(eps), err)
	}
}

func TestResolveBeforeRun(t *testing.T) {
	register(t, consul.Client, instance{id: "early-a", service: "early", addr: "127.0.0.81", port: 15006, passing: true})

	tests := []struct {
		name      string
		runAfter  time.Duration // 0: never
		firstWait time.Duration
		wantErr   bool
	}{
		{name: "run starts while the first lookup waits", runAfter: 100 * time.Millisecond, firstWait: 5 * time.Second},
		{name: "run never starts: bounded", firstWait: 200 * time.Millisecond, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := NewConsul(consul.Client, testLogger(t), WithFirstWait(tc.firstWait))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			if tc.runAfter > 0 {
				time.AfterFunc(tc.runAfter, func() { d.Run(ctx); close(done) })
			} else {
				close(done)
			}
			defer func() { cancel(); <-done }()
			start := time.Now()
			eps, err := d.Resolve(context.Background(), "early")
			if tc.wantErr {
				if err == nil || time.Since(start) > tc.firstWait+time.Second {
					t.Fatalf("Resolve = %v, %v after %v; want an error after about %v", addrs(eps), err, time.Since(start), tc.firstWait)
				}
				return
			}
			if err != nil || len(eps) != 1 {
				t.Fatalf("Resolve = %v, %v; want [127.0.0.81:15006]", addrs(eps), err)
			}
		})
	}
}

func TestRunStopsEveryWatch(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
	register(t, consul.Client, instance{id: "stop-a", service: "stopper", addr: "127.0.0.91", port: 15006, passing: true})
	register(t, consul.Client, instance{id: "stop-b", service: "stopper2", addr: "127.0.0.92", port: 15006, passing: true})
	d := NewConsul(consul.Client, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	wantAddrs(t, d, "stopper", 2*time.Second, "127.0.0.91:15006")
	wantAddrs(t, d, "stopper2", 2*time.Second, "127.0.0.92:15006")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return 5s after cancel")
	}
	// After Run: known services still answer (a draining agent routes),
	// new ones do not wait.
	if eps, err := resolve(d, "stopper"); err != nil || len(eps) != 1 {
		t.Errorf("after Run: stopper = %v, %v; want the last answer", addrs(eps), err)
	}
	register(t, consul.Client, instance{id: "stop-c", service: "stopper3", addr: "127.0.0.93", port: 15006, passing: true})
	if _, err := resolve(d, "stopper3"); err == nil {
		t.Error("after Run: a service never asked for resolved")
	}
}

func TestResolveDoesNotAllocate(t *testing.T) {
	register(t, consul.Client, instance{id: "alloc-a", service: "alloc", addr: "127.0.0.95", port: 15006, passing: true})
	d := startDiscovery(t, consul.Client)
	wantAddrs(t, d, "alloc", 2*time.Second, "127.0.0.95:15006")
	ctx := context.Background()
	tests := []struct {
		name    string
		service string
	}{
		{name: "known service", service: "alloc"},
		{name: "unknown service", service: "no-such-service"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, func() { _, _ = d.Resolve(ctx, tc.service) }); n != 0 {
				t.Errorf("Resolve(%s) allocates %v times per call, want 0", tc.service, n)
			}
		})
	}
}

func BenchmarkResolve(b *testing.B) {
	for i := range 20 {
		register(b, consul.Client, instance{id: "bench-" + strconv.Itoa(i), service: "bench", addr: meshtest.LoopbackHost(100 + i), port: 15006, passing: true})
	}
	d := startDiscovery(b, consul.Client)
	if _, err := resolve(d, "bench"); err != nil {
		b.Fatal(err)
	}
	if _, err := resolve(d, "bench-unknown"); !errors.Is(err, endpoint.ErrUnknownService) {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"bench", "bench-unknown"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = d.Resolve(ctx, name)
				}
			})
		})
	}
}
