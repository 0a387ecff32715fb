package route_test

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
	"google.golang.org/grpc"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshvm/mesh/agent/chain"
	"github.com/meshvm/mesh/agent/endpoint"
	"github.com/meshvm/mesh/agent/proxy"
	"github.com/meshvm/mesh/agent/route"
	"github.com/meshvm/mesh/agent/table"
	"github.com/meshvm/mesh/config"
)

// The simulated VMs: the caller's agent A, two callee agents B1 and B2 with
// their apps, and a gRPC callee.
const (
	hostA    = "127.0.0.11"
	hostB1   = "127.0.0.12"
	hostB2   = "127.0.0.13"
	hostGRPC = "127.0.0.14"
	// deadAddr refuses connections: nothing listens on port 1.
	deadAddr = "127.0.0.15:1"
)

// mesh is the two-hop topology every test in this package runs against:
//
//	client -> A outbound / A upstream listener -> B inbound -> app
type mesh struct {
	outbound     string // A's outbound listener
	grpcUpstream string // A's per-upstream listener for service "interop"
	resolver     *mapResolver
}

var topo *mesh

// TestMain runs every test twice: through the plain routing handlers of
// this package, and through the governed handlers the agent serves
// (agent/chain, default policy: timeouts, retries, breaker, outlier
// detection, locality-aware round robin), which must keep every behaviour.
func TestMain(m *testing.M) {
	// The interop cases report failures with grpclog's Fatal, which exits;
	// turn that into a panic the test can recover and report.
	grpclog.SetLoggerV2(panicLogger{grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr)})
	code := 0
	for _, governed := range []bool{false, true} {
		var stop func()
		var err error
		topo, stop, err = startMesh(governed)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start mesh:", err)
			os.Exit(1)
		}
		if c := m.Run(); c != 0 {
			fmt.Fprintf(os.Stderr, "tests failed with governed=%v handlers\n", governed)
			code = c
		}
		stop()
	}
	os.Exit(code)
}

// handlers builds an agent's listener handlers: route's plain ones, or
// agent/chain's under the default policy with endpoints from res.
type handlers struct {
	inbound  func(app string) http.Handler
	outbound func() http.Handler
	upstream func(service string) http.Handler
}

func newHandlers(governed bool, res endpoint.Resolver, fwd *proxy.Forwarder) (handlers, error) {
	log := zerolog.Nop()
	if !governed {
		return handlers{
			inbound:  func(app string) http.Handler { return route.NewInbound(app, fwd, log) },
			outbound: func() http.Handler { return route.NewOutbound(res, fwd, log) },
			upstream: func(s string) http.Handler { return route.NewUpstream(s, res, fwd, log) },
		}, nil
	}
	cfg := config.Default()
	t := table.FromConfig(cfg)
	if res == nil {
		res = &mapResolver{eps: map[string][]endpoint.Endpoint{}}
	}
	h, err := chain.Compile(t, res, chain.Local{Service: "test"}, fwd, chain.NewState(nil), log)
	if err != nil {
		return handlers{}, err
	}
	sw := chain.NewSwitch(h)
	return handlers{inbound: sw.Inbound, outbound: sw.Outbound, upstream: sw.Upstream}, nil
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

// serve starts h on host:0 with the agent's server settings.
func serve(host string, h http.Handler) (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", nil, fmt.Errorf("listen on %s: %w", host, err)
	}
	srv := proxy.NewServer(h, zerolog.Nop())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	return l.Addr().String(), func() {
		_ = srv.Close()
		<-done
	}, nil
}

// bigBody is what /big/{n} serves: n bytes from a fixed buffer, so the
// app itself allocates nothing per byte.
// appHeld and appCancelled report what /hold saw.
var (
	appHeld      = make(chan string, 4)
	appCancelled = make(chan string, 4)
)

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

func startMesh(governed bool) (*mesh, func(), error) {
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
	for _, vm := range []struct{ host, name string }{{hostB1, "b1"}, {hostB2, "b2"}} {
		app, stop, err := serve(vm.host, appHandler(vm.name))
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		fwd := proxy.NewForwarder(proxy.Options{Log: log})
		stops = append(stops, fwd.CloseIdleConnections)
		hs, err := newHandlers(governed, nil, fwd)
		if err != nil {
			return fail(err)
		}
		in, stop, err := serve(vm.host, hs.inbound(app))
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		inbounds = append(inbounds, in)
	}

	// A callee VM whose app is down: its agent is up, nothing listens behind it.
	dfwd := proxy.NewForwarder(proxy.Options{Log: log})
	stops = append(stops, dfwd.CloseIdleConnections)
	dhs, err := newHandlers(governed, nil, dfwd)
	if err != nil {
		return fail(err)
	}
	down, stop, err := serve(hostB2, dhs.inbound(deadAddr))
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)

	// The gRPC interop server and its inbound agent.
	gl, err := net.Listen("tcp", net.JoinHostPort(hostGRPC, "0"))
	if err != nil {
		return fail(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	stops = append(stops, gs.Stop)
	gfwd := proxy.NewForwarder(proxy.Options{Log: log})
	stops = append(stops, gfwd.CloseIdleConnections)
	ghs, err := newHandlers(governed, nil, gfwd)
	if err != nil {
		return fail(err)
	}
	gin, stop, err := serve(hostGRPC, ghs.inbound(gl.Addr().String()))
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
	hs, err := newHandlers(governed, res, fwd)
	if err != nil {
		return fail(err)
	}
	out, stop, err := serve(hostA, hs.outbound())
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)
	up, stop, err := serve(hostA, hs.upstream("interop"))
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stop)
	return &mesh{outbound: out, grpcUpstream: up, resolver: res}, stopAll, nil
}

// client returns an HTTP/1.1 client whose every connection goes to addr,
// whatever the URL's host: like an app calling http://orders/ through its
// agent with a Host header.
func client(addr string) *http.Client {
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

// h2cClient is like client but speaks HTTP/2 with prior knowledge.
func h2cClient(addr string) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := client(addr)
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
