package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/agent"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

var consul *meshtest.Consul

func TestMain(m *testing.M) { meshtest.RunWithConsul(m, &consul) }

// app is a real HTTP app on a loopback "VM" that counts what it served.
type app struct {
	addr   string
	port   int
	served atomic.Int64
	sick   atomic.Bool // fails its health check when set
	srv    *http.Server
}

func startApp(t *testing.T, ip, name string, h http.HandlerFunc) *app {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	a := &app{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		if a.sick.Load() {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		if h != nil {
			h(w, r)
			return
		}
		w.Header().Set("X-App", name)
		fmt.Fprintf(w, "hello from %s path=%s xff=%s", name, r.URL.Path, r.Header.Get("X-Forwarded-For"))
	})
	a.srv = &http.Server{Handler: mux}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() { a.srv.Close() })
	return a
}

type runningAgent struct {
	*agent.Agent
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs an in-process agent for service on ip, in front of app.
func startAgent(t *testing.T, ip, service string, a *app, mutate func(*config.Config)) *runningAgent {
	t.Helper()
	ra := launchAgent(t, ip, service, a.port, mutate, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
	meshtest.Eventually(t, 15*time.Second, func() error {
		if !ra.Ready() {
			return fmt.Errorf("agent %s on %s not ready", service, ip)
		}
		return nil
	})
	return ra
}

// launchAgent runs an in-process agent for service on ip, in front of an
// app on appPort, logging to log; it does not wait for it to be ready.
func launchAgent(t *testing.T, ip, service string, appPort int, mutate func(*config.Config), log zerolog.Logger) *runningAgent {
	t.Helper()
	cfg := config.Default()
	cfg.Consul.Addr = consul.Addr
	cfg.Agent.Service = service
	cfg.Agent.AppAddress = ip
	cfg.Agent.AppPort = appPort
	cfg.Agent.AppHealth = "/health"
	cfg.Agent.HealthInterval = time.Second
	cfg.Agent.InboundAddr = ip + ":0"
	cfg.Agent.OutboundAddr = ip + ":0"
	cfg.Agent.AdminAddr = ip + ":0"
	cfg.Agent.Node = "vm-" + strings.ReplaceAll(ip, ".", "-")
	cfg.Agent.DrainPeriod = 300 * time.Millisecond
	cfg.Agent.ResyncInterval = time.Second
	cfg.Agent.CacheDir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(config.RoleAgent); err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: ag, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- ag.Run(ctx) }()
	t.Cleanup(func() { ra.stop(t) })
	return ra
}

func (ra *runningAgent) stop(t *testing.T) {
	ra.cancel()
	select {
	case err := <-ra.done:
		if err != nil {
			t.Errorf("agent Run returned %v", err)
		}
		ra.done <- nil
	case <-time.After(30 * time.Second):
		t.Error("agent did not stop in 30s")
	}
}

func waitPassing(t *testing.T, service string, n int) {
	t.Helper()
	meshtest.Eventually(t, 15*time.Second, func() error {
		entries, _, err := consul.Client.Health().Service(service, "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != n {
			return fmt.Errorf("%d passing instances of %s, want %d", len(entries), service, n)
		}
		return nil
	})
}

// clientFrom is an HTTP client whose connections come from ip, as an app
// on that "VM" would.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

func get(t *testing.T, url, host string) (*http.Response, string) {
	t.Helper()
	return getWith(t, http.DefaultClient, url, host)
}

func getWith(t *testing.T, c *http.Client, url, host string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", url, host, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestCallThroughTwoAgents(t *testing.T) {
	b1 := startApp(t, "127.0.0.22", "orders-1", nil)
	b2 := startApp(t, "127.0.0.23", "orders-2", nil)
	startAgent(t, "127.0.0.22", "orders", b1, nil)
	startAgent(t, "127.0.0.23", "orders", b2, nil)
	upstreamPort := meshtest.FreePort("127.0.0.21")
	caller := startApp(t, "127.0.0.21", "web", nil)
	a := startAgent(t, "127.0.0.21", "web", caller, func(c *config.Config) {
		c.Agent.Upstreams = []config.Upstream{{Service: "orders", Listen: "127.0.0.21:" + strconv.Itoa(upstreamPort)}}
	})
	waitPassing(t, "orders", 2)

	out := "http://" + a.Addr("outbound")
	web := clientFrom("127.0.0.21")
	seen := map[string]int{}
	for _, tc := range []struct{ name, url, host string }{
		{"host header", out + "/a", "orders"},
		{"mesh suffix", out + "/b", "orders.mesh"},
		{"consul suffix with port", out + "/c", "orders.service.consul:80"},
		{"upstream listener", "http://" + a.Addr("upstream orders") + "/d", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 4; i++ {
				resp, body := getWith(t, web, tc.url, tc.host)
				if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "hello from orders-") {
					t.Fatalf("status %d body %q", resp.StatusCode, body)
				}
				if !strings.Contains(body, "xff=127.0.0.21") {
					t.Errorf("X-Forwarded-For does not name the caller: %q", body)
				}
				seen[resp.Header.Get("X-App")]++
			}
		})
	}
	if seen["orders-1"] == 0 || seen["orders-2"] == 0 {
		t.Errorf("round robin did not reach both instances: %v", seen)
	}

	resp, _ := get(t, out+"/", "nosuchservice")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("x-mesh-reason") != "no-route" {
		t.Errorf("unknown service: status %d reason %q, want 503 no-route", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
	}

	// The admin listener says what the agent knows.
	resp, body := get(t, "http://"+a.Addr("admin")+"/config_dump", "")
	var dump struct {
		Ready        bool
		Registration struct{ ID string }
		Services     map[string][]struct{ Addr, Node string }
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil || resp.StatusCode != 200 {
		t.Fatalf("config_dump: %d %v %s", resp.StatusCode, err, body)
	}
	if !dump.Ready || dump.Registration.ID == "" || len(dump.Services["orders"]) != 2 {
		t.Errorf("config_dump misses what the agent knows: %s", body)
	}
	// Endpoints carry the VMs' names, not the name of the Consul agent
	// they registered through.
	nodes := map[string]bool{}
	for _, ep := range dump.Services["orders"] {
		nodes[ep.Node] = true
	}
	if !nodes["vm-127-0-0-22"] || !nodes["vm-127-0-0-23"] {
		t.Errorf("config_dump endpoints name nodes %v, want vm-127-0-0-22 and vm-127-0-0-23", nodes)
	}
	// It speaks the YAML's language: snake_case keys, durations as written.
	for _, want := range []string{`"sleep_window": "5s"`, `"default_policy": {`, `"drain_period": "300ms"`,
		`"health_interval": "1s"`, `"app_port": `} {
		if !strings.Contains(body, want) {
			t.Errorf("config_dump lacks %s", want)
		}
	}
	for _, bad := range []string{`"SleepWindow"`, `"Addr"`, `5000000000`, `"DefaultPolicy"`} {
		if strings.Contains(body, bad) {
			t.Errorf("config_dump has Go's %s, not the config's language", bad)
		}
	}
	if resp, _ := get(t, "http://"+a.Addr("admin")+"/ready", ""); resp.StatusCode != 200 {
		t.Errorf("/ready = %d", resp.StatusCode)
	}
}

func TestRegistrationRestoredAfterConsulForgetsIt(t *testing.T) {
	b := startApp(t, "127.0.0.31", "pay", nil)
	startAgent(t, "127.0.0.31", "pay", b, nil)
	waitPassing(t, "pay", 1)
	svcs, err := consul.Client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for sid, s := range svcs {
		if s.Service == "pay" {
			id = sid
			if s.Address != "127.0.0.31" || s.Meta["app_port"] != strconv.Itoa(b.port) || s.Meta["mesh_version"] == "" {
				t.Errorf("registration %+v lacks advertise address or meta", s)
			}
		}
	}
	if err := consul.Client.Agent().ServiceDeregister(id); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitPassing(t, "pay", 1)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("registration restored after %s, want within 10s", took)
	}
}

// On SIGTERM the agent deregisters first, keeps serving through the drain
// period, and lets a request in flight finish.
func TestShutdownDeregistersThenDrains(t *testing.T) {
	release := make(chan struct{})
	b := startApp(t, "127.0.0.41", "slow", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "done")
	})
	ra := startAgent(t, "127.0.0.41", "slow", b, func(c *config.Config) { c.Agent.DrainPeriod = 2 * time.Second })
	waitPassing(t, "slow", 1)
	in := "http://" + ra.Addr("inbound")

	inflight := make(chan string, 1)
	go func() {
		resp, err := http.Get(in + "/slow")
		if err != nil {
			inflight <- "error: " + err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if b.served.Load() == 0 {
			return fmt.Errorf("slow request not at the app yet")
		}
		return nil
	})

	ra.cancel() // what SIGTERM does in `mesh agent`
	meshtest.Eventually(t, 3*time.Second, func() error {
		entries, _, err := consul.Client.Catalog().Service("slow", "", nil)
		if err != nil || len(entries) != 0 {
			return fmt.Errorf("still in the catalog (%v)", err)
		}
		return nil
	})
	// Deregistered, but still serving during the drain period.
	if resp, body := get(t, in+"/fast", ""); resp.StatusCode != 200 || body != "done" {
		t.Errorf("during drain: %d %q, want 200 done", resp.StatusCode, body)
	}
	close(release)
	if got := <-inflight; got != "200 done" {
		t.Errorf("in-flight request at SIGTERM: %s, want 200 done", got)
	}
	select {
	case err := <-ra.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		ra.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop after drain")
	}
	if _, err := net.DialTimeout("tcp", ra.Addr("inbound"), time.Second); err == nil {
		t.Error("inbound listener still accepting after shutdown")
	}
}
