package chain_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mccutchen/go-httpbin/v2/httpbin"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
)

// The simulated VMs of the data-path tests: the caller's agent A, two
// callee agents B1 and B2 with their apps (go-httpbin), and a gRPC callee.
const (
	meshHostA    = "127.0.0.11"
	meshHostB1   = "127.0.0.12"
	meshHostB2   = "127.0.0.13"
	meshHostGRPC = "127.0.0.14"
	// meshDeadAddr refuses connections: nothing listens on port 1.
	meshDeadAddr = "127.0.0.15:1"
)

// mesh is the two-hop topology the data-path tests run against, every
// agent serving the governed handlers under the default policy (timeouts,
// retries, breaker, outlier detection, locality-aware round robin):
//
//	client -> A outbound / A upstream listener -> B inbound -> app
type mesh struct {
	outbound     string // A's outbound listener
	grpcUpstream string // A's per-upstream listener for service "interop"
	resolver     *mapResolver
}

// topo is started by TestMain for the whole package.
var topo *mesh

// TestMain starts the data-path topology, runs the package's tests, stops
// it, and checks that no goroutine is left.
func TestMain(m *testing.M) {
	// The interop cases report failures with grpclog's Fatal, which exits;
	// turn that into a panic the test can recover and report.
	grpclog.SetLoggerV2(panicLogger{grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr)})
	var stop func()
	var err error
	topo, stop, err = startMesh()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start mesh:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if code == 0 {
		err := goleak.Find(
			// pooled keep-alive connections of the test clients
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goleak: goroutines left after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// meshSwitch compiles an agent's listener handlers from the default
// configuration, with endpoints from res (none when res is nil).
func meshSwitch(res endpoint.Resolver, fwd *proxy.Forwarder) (*chain.Switch, error) {
	if res == nil {
		res = &mapResolver{eps: map[string][]endpoint.Endpoint{}}
	}
	h, err := chain.Compile(table.FromConfig(config.Default()), res, chain.Local{Service: "test"}, fwd, chain.NewState(nil), zerolog.Nop())
	if err != nil {
		return nil, err
	}
	return chain.NewSwitch(h), nil
}

// mapResolver is an endpoint.Resolver backed by a map: the real discovery
// is tested with Consul by the agent package.
type mapResolver struct {
	mu  sync.RWMutex
	eps map[string][]endpoint.Endpoint
}

func (m *mapResolver) Resolve(_ context.Context, service string) ([]endpoint.Endpoint, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	eps, ok := m.eps[service]
	if !ok {
		return nil, endpoint.ErrUnknownService
	}
	return eps, nil
}

func (m *mapResolver) set(service string, addrs ...string) {
	eps := make([]endpoint.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		eps = append(eps, endpoint.Endpoint{Addr: a})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.eps[service] = eps
}

// appHeld and appCancelled report what /hold saw.
var (
	appHeld      = make(chan string, 4)
	appCancelled = make(chan string, 4)
)

// bigChunk is what /big/{n} serves n bytes from, so the app itself
// allocates nothing per byte.
var bigChunk = make([]byte, 64<<10)

// appHandler is the app on a callee VM: go-httpbin plus a few endpoints
// httpbin lacks.
func appHandler(hostname string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", httpbin.New(
		httpbin.WithHostname(hostname),
		httpbin.WithMaxBodySize(200<<20),
		httpbin.WithMaxDuration(10*time.Second),
	))
	// /big/{n}: a download of n bytes, streamed (no Content-Length).
	mux.HandleFunc("GET /big/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		for n > 0 {
			c := bigChunk
			if int64(len(c)) > n {
				c = c[:n]
			}
			if _, err := w.Write(c); err != nil {
				return
			}
			n -= int64(len(c))
		}
	})
	// /proto: which protocol the request reached the app with.
	mux.HandleFunc("/proto", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.Host)
	})
	// /hold: waits until the request is cancelled, reporting both.
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		appHeld <- id
		select {
		case <-r.Context().Done():
			appCancelled <- id
		case <-time.After(30 * time.Second):
		}
	})
	// /echo-stream: echoes the request body as it arrives (full duplex).
	mux.HandleFunc("POST /echo-stream", func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				_, _ = w.Write(buf[:n])
				_ = http.NewResponseController(w).Flush()
			}
			if err != nil {
				return
			}
		}
	})
	return mux
}

func startMesh() (*mesh, func(), error) {
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	fail := func(err error) (*mesh, func(), error) {
		stopAll()
		return nil, nil, err
	}
	log := zerolog.Nop()

	// Callee VMs: app + inbound agent each.
	var inbounds []string
	for _, vm := range []struct{ host, name string }{{meshHostB1, "b1"}, {meshHostB2, "b2"}} {
		app, stop, err := startServer(vm.host, appHandler(vm.name))
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		fwd := proxy.NewForwarder(proxy.Options{Log: log})
		stops = append(stops, fwd.CloseIdleConnections)
		sw, err := meshSwitch(nil, fwd)
		if err != nil {
			return fail(err)
		}
		in, stop, err := startServer(vm.host, sw.Inbound(app))
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		inbounds = append(inbounds, in)
	}

	// A callee VM whose app is down: its agent is up, nothing listens behind it.
	dfwd := proxy.NewForwarder(proxy.Options{Log: log})
	stops = append(stops, dfwd.CloseIdleConnections)
	dsw, err := meshSwitch(nil, dfwd)
	if err != nil {
		return fail(err)
	}
	down, stop, err := startServer(meshHostB2, dsw.Inbound(meshDeadAddr))
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)

	// The gRPC interop server and its inbound agent.
	gl, err := net.Listen("tcp", net.JoinHostPort(meshHostGRPC, "0"))
	if err != nil {
		return fail(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	stops = append(stops, gs.Stop)
	gfwd := proxy.NewForwarder(proxy.Options{Log: log})
	stops = append(stops, gfwd.CloseIdleConnections)
	gsw, err := meshSwitch(nil, gfwd)
	if err != nil {
		return fail(err)
	}
	gin, stop, err := startServer(meshHostGRPC, gsw.Inbound(gl.Addr().String()))
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)

	// The caller VM's agent A.
	res := &mapResolver{eps: map[string][]endpoint.Endpoint{}}
	res.set("orders", inbounds[0])
	res.set("pair", inbounds...)
	res.set("empty")
	res.set("appdown", down)
	res.set("interop", gin)
	fwd := proxy.NewForwarder(proxy.Options{Log: log})
	stops = append(stops, fwd.CloseIdleConnections)
	sw, err := meshSwitch(res, fwd)
	if err != nil {
		return fail(err)
	}
	out, stop, err := startServer(meshHostA, sw.Outbound())
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)
	up, stop, err := startServer(meshHostA, sw.Upstream("interop"))
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)
	return &mesh{outbound: out, grpcUpstream: up, resolver: res}, stopAll, nil
}

// agentClient returns an HTTP/1.1 client whose every connection goes to
// addr, whatever the URL's host: like an app calling http://orders/
// through its agent with a Host header.
func agentClient(addr string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			},
			DisableCompression: true,
		},
		Timeout: 60 * time.Second,
	}
}

// h2cClient is like agentClient but speaks HTTP/2 with prior knowledge.
func h2cClient(addr string) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := agentClient(addr)
	c.Transport.(*http.Transport).Protocols = &p
	return c
}

// panicLogger makes grpclog's Fatal panic instead of exiting the process.
type panicLogger struct{ grpclog.LoggerV2 }

type interopFailure struct{ msg string }

func (l panicLogger) Fatal(args ...any) { panic(interopFailure{fmt.Sprint(args...)}) }
func (l panicLogger) Fatalf(format string, args ...any) {
	panic(interopFailure{fmt.Sprintf(format, args...)})
}
func (l panicLogger) Fatalln(args ...any)           { panic(interopFailure{fmt.Sprint(args...)}) }
func (l panicLogger) FatalDepth(_ int, args ...any) { panic(interopFailure{fmt.Sprint(args...)}) }
