package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mccutchen/go-httpbin/v2/httpbin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// Loopback "VMs" of the protocol tests.
const (
	protoCaller = "127.0.0.101" // agent A
	protoWeb    = "127.0.0.102" // go-httpbin, HTTP/1.1 only
	protoH2     = "127.0.0.103" // an h2c-only app
	protoGRPC   = "127.0.0.104" // the gRPC interop server
	protoRedis  = "127.0.0.105" // redis-server
)

// serveApp serves h on ip speaking HTTP/1.1 and/or h2c and returns it as
// an app for startAgent.
func serveApp(t *testing.T, ip string, h1, h2c bool, h http.Handler) *app {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(h1)
	p.SetUnencryptedHTTP2(h2c)
	a := &app{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, srv: &http.Server{Handler: h, Protocols: &p}}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() { a.srv.Close() })
	return a
}

// protoMesh is agent A (caller) and one callee agent per app protocol.
type protoMesh struct {
	a                 *runningAgent
	web, h2, grpc, rd *runningAgent
	h2Served          *atomic.Int64
	redis             *meshtest.Redis
}

// startProtoMesh starts the four apps, their agents (auto for go-httpbin
// and the h2c app, grpc, tcp) and a caller agent with a tcp upstream
// listener to each service; with xds, every agent takes its config from a
// real control plane, otherwise from Consul.
func startProtoMesh(t *testing.T, xds bool) *protoMesh {
	t.Helper()
	m := &protoMesh{h2Served: new(atomic.Int64)}
	var cp []string
	if xds {
		cp = []string{newControl(t, controlOptions{}).xdsAddr}
	}
	withCP := func(edit func(*config.Config)) func(*config.Config) {
		return func(c *config.Config) {
			c.Agent.ControlPlane = cp
			if edit != nil {
				edit(c)
			}
		}
	}
	web := serveApp(t, protoWeb, true, false, httpbin.New().Handler())
	h2 := serveApp(t, protoH2, false, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.h2Served.Add(1)
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	gl, err := net.Listen("tcp", protoGRPC+":0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	m.redis = meshtest.StartRedis(t, protoRedis)
	_, rport, _ := net.SplitHostPort(m.redis.Addr)
	rp, _ := strconv.Atoi(rport)

	tcpCheck := func(proto string) func(*config.Config) {
		return func(c *config.Config) { c.Agent.AppHealth = ""; c.Agent.AppProtocol = proto }
	}
	m.web = startAgent(t, protoWeb, "web", web, withCP(func(c *config.Config) { c.Agent.AppHealth = "/status/200" }))
	m.h2 = startAgent(t, protoH2, "h2app", h2, withCP(tcpCheck(config.AppProtocolAuto)))
	m.grpc = startAgent(t, protoGRPC, "grpcsvc", &app{port: gl.Addr().(*net.TCPAddr).Port}, withCP(tcpCheck(config.AppProtocolGRPC)))
	m.rd = startAgent(t, protoRedis, "redis", &app{port: rp}, withCP(tcpCheck(config.AppProtocolTCP)))
	caller := startApp(t, protoCaller, "caller", nil)
	m.a = startAgent(t, protoCaller, "caller", caller, withCP(func(c *config.Config) {
		for _, s := range []string{"web", "h2app", "grpcsvc", "redis"} {
			c.Agent.Upstreams = append(c.Agent.Upstreams, config.Upstream{Service: s, Protocol: config.UpstreamTCP,
				Listen: net.JoinHostPort(protoCaller, strconv.Itoa(meshtest.FreePort(protoCaller)))})
		}
	}))
	for svc, want := range map[string]string{"web": "http1", "h2app": "http2", "grpcsvc": "grpc", "redis": "tcp"} {
		meshtest.Eventually(t, 20*time.Second, func() error {
			entries, _, err := consul.Client.Health().Service(svc, "", true, nil)
			if err != nil {
				return err
			}
			if len(entries) != 1 || entries[0].Service.Meta[config.MetaAppProtocol] != want {
				return fmt.Errorf("%s: %d passing instances, want 1 registered with %s=%s", svc, len(entries), config.MetaAppProtocol, want)
			}
			return nil
		})
		if !xds {
			continue // Consul-direct: the caller's agent reads the meta when the app first calls
		}
		// The caller's agent knows it from the Cluster.
		meshtest.Eventually(t, 20*time.Second, func() error {
			var d struct {
				Source   string
				Services map[string][]struct{ Protocol string }
			}
			_, body := get(t, "http://"+m.a.Addr("admin")+"/config_dump", "")
			if err := json.Unmarshal([]byte(body), &d); err != nil {
				return err
			}
			if eps := d.Services[svc]; len(eps) != 1 || eps[0].Protocol != want || d.Source != "xds" {
				return fmt.Errorf("caller's config_dump (source %s): %s endpoints %+v, want one speaking %s", d.Source, svc, eps, want)
			}
			return nil
		})
	}
	return m
}

// h2cClient and h1Client speak only h2c (prior knowledge) or HTTP/1.1;
// their idle connections are closed when the test ends, so that the TCP
// relays they crossed need not wait for them at shutdown.
func h2cClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func h1Client(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// grpcTo is a gRPC client of the interop service at addr, with authority
// (the service name) when addr is the outbound listener.
func grpcTo(t *testing.T, addr, authority string) testgrpc.TestServiceClient {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// interopCalls runs unary (small and large), server, client and
// bidirectional streaming calls and a status check against the interop
// server.
func interopCalls(t *testing.T, c testgrpc.TestServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := c.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("empty_unary: %v", err)
	}
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 314159, Payload: &testgrpc.Payload{Body: make([]byte, 271828)}})
	if err != nil || len(resp.GetPayload().GetBody()) != 314159 {
		t.Fatalf("large_unary: %v", err)
	}
	ss, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 31415}, {Size: 9}, {Size: 2653}}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := ss.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("server_streaming: %v", err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("server_streaming: %d messages, want 3", n)
	}
	cs, err := c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{27182, 8, 1828, 45904} {
		if err := cs.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, size)}}); err != nil {
			t.Fatalf("client_streaming: %v", err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || r.GetAggregatedPayloadSize() != 74922 {
		t.Fatalf("client_streaming: %v %v", r, err)
	}
	pp, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int32{31415, 9, 2653, 58979} {
		if err := pp.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: size}}}); err != nil {
			t.Fatalf("ping_pong: %v", err)
		}
		r, err := pp.Recv()
		if err != nil || len(r.GetPayload().GetBody()) != int(size) {
			t.Fatalf("ping_pong: %v", err)
		}
	}
	_ = pp.CloseSend()
	_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: 2, Message: "test status message"}})
	if s := status.Convert(err); s.Code() != codes.Unknown || s.Message() != "test status message" {
		t.Errorf("status_code_and_message: %v", err)
	}
}

// Every downstream protocol (HTTP/1.1, h2c, gRPC, raw TCP) against every
// app protocol (go-httpbin on HTTP/1.1, an h2c-only app, the gRPC interop
// server, Redis), through the caller's agent and the callee's: what can
// be carried arrives, what cannot is refused with a clear answer.
func TestEveryDownstreamToEveryAppProtocol(t *testing.T) {
	t.Run("consul-direct", func(t *testing.T) { testEveryProtocolPair(t, false) })
	t.Run("xds", func(t *testing.T) { testEveryProtocolPair(t, true) })
}

func testEveryProtocolPair(t *testing.T, xds bool) {
	m := startProtoMesh(t, xds)
	out := "http://" + m.a.Addr("outbound")
	upstream := func(svc string) string { return m.a.Addr("upstream " + svc) }

	httpCase := func(c *http.Client, host, path string, wantStatus int, wantBody, wantReason string) func(t *testing.T) {
		return func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, out+path, nil)
			req.Host = host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != wantStatus || !strings.Contains(string(b), wantBody) || resp.Header.Get("X-Mesh-Reason") != wantReason {
				t.Errorf("status %d reason %q body %.200q; want %d reason %q body containing %q",
					resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), b, wantStatus, wantReason, wantBody)
			}
		}
	}
	for _, dc := range []struct {
		name string
		c    *http.Client
	}{{"h1", h1Client(t)}, {"h2c", h2cClient(t)}} {
		t.Run(dc.name+" to http1 app", httpCase(dc.c, "web", "/get", 200, `"url"`, ""))
		t.Run(dc.name+" to http2 app", httpCase(dc.c, "h2app", "/x", 200, "HTTP/2.0 /x", ""))
		// A plain request reaches the gRPC server, which answers it itself.
		t.Run(dc.name+" to grpc app", httpCase(dc.c, "grpcsvc", "/", http.StatusUnsupportedMediaType, "", ""))
		t.Run(dc.name+" to tcp app", httpCase(dc.c, "redis", "/", http.StatusBadGateway, "raw TCP", "protocol-mismatch"))
	}

	// Straight to the callee's inbound (a caller without an agent): the
	// callee's agent converts, from what it probed.
	t.Run("h2c to http1 app's inbound", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+m.web.Addr("inbound")+"/get", nil)
		resp, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Errorf("h2c to the inbound of an HTTP/1.1 app: %s %d %q", resp.Proto, resp.StatusCode, resp.Header.Get("X-Mesh-Reason"))
		}
	})
	t.Run("grpc to http1 app", func(t *testing.T) {
		_, err := grpcTo(t, m.a.Addr("outbound"), "web").EmptyCall(context.Background(), &testgrpc.Empty{})
		if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "HTTP/1.1 only") {
			t.Errorf("gRPC to an HTTP/1.1 app: %v, want UNAVAILABLE saying the app speaks HTTP/1.1 only", err)
		}
	})
	t.Run("grpc to http2 app", func(t *testing.T) {
		before := m.h2Served.Load()
		_, err := grpcTo(t, m.a.Addr("outbound"), "h2app").EmptyCall(context.Background(), &testgrpc.Empty{})
		if err == nil || m.h2Served.Load() != before+1 {
			t.Errorf("gRPC to a plain h2c app: %v, served %d; want the call to reach the app (which is no gRPC server)", err, m.h2Served.Load()-before)
		}
	})
	t.Run("grpc to grpc app", func(t *testing.T) { interopCalls(t, grpcTo(t, m.a.Addr("outbound"), "grpcsvc")) })
	t.Run("grpc to tcp app", func(t *testing.T) {
		_, err := grpcTo(t, m.a.Addr("outbound"), "redis").EmptyCall(context.Background(), &testgrpc.Empty{})
		if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "protocol-mismatch") {
			t.Errorf("gRPC to a TCP service: %v, want UNAVAILABLE protocol-mismatch", err)
		}
	})

	// Raw TCP carries anything: HTTP/1.1 bytes, h2c, gRPC, Redis.
	t.Run("tcp to http1 app", func(t *testing.T) {
		c, err := net.Dial("tcp", upstream("web"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /get HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("HTTP/1.1 over a tcp upstream: %v %v", resp, err)
		}
	})
	t.Run("tcp to http2 app", func(t *testing.T) {
		resp, err := h2cClient(t).Get("http://" + upstream("h2app") + "/y")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "HTTP/2.0 /y" {
			t.Errorf("h2c over a tcp upstream: %q", b)
		}
	})
	t.Run("tcp to grpc app", func(t *testing.T) { interopCalls(t, grpcTo(t, upstream("grpcsvc"), "")) })
	t.Run("tcp to tcp app", func(t *testing.T) {
		host, port, _ := net.SplitHostPort(upstream("redis"))
		cli := func(args ...string) string {
			out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("redis-cli %v: %v %s", args, err, out)
			}
			return strings.TrimSpace(string(out))
		}
		if got := cli("SET", "greeting", "hello through the mesh"); got != "OK" {
			t.Errorf("SET: %q", got)
		}
		if got, err := meshtest.RedisCommand(m.redis.Addr, "GET", "greeting"); err != nil || got != "hello through the mesh" {
			t.Errorf("the value did not reach the real Redis: %q %v", got, err)
		}
		out, err := exec.Command("redis-benchmark", "-h", host, "-p", port, "-t", "set,get", "-n", "2000", "-q").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "GET:") || !strings.Contains(string(out), "requests per second") {
			t.Errorf("redis-benchmark through the mesh: %v %s", err, out)
		}
	})
}

// h2specFailures runs h2spec against host:port and returns the failed
// cases by id ("http2/6.5.3/1").
func h2specFailures(t *testing.T, addr string) (failed []string, total int) {
	t.Helper()
	bin := filepath.Join(meshtest.RepoRoot(), "bin", "h2spec")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("h2spec missing (run `make h2spec`): %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	out, err := exec.Command(bin, "-h", host, "-p", port, "-j", report).CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("h2spec: %v %s", err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec report: %v; output: %s", err, out)
	}
	var r struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Cases   []struct {
				Error   *string `xml:"error"`
				Failure *string `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	for _, s := range r.Suites {
		for i, c := range s.Cases {
			total++
			if c.Error != nil || c.Failure != nil {
				failed = append(failed, fmt.Sprintf("%s/%d", s.Package, i+1))
			}
		}
	}
	return failed, total
}

// The agent's h2c listeners (an HTTP upstream listener routing to
// go-httpbin through the callee's agent; the inbound in front of an
// HTTP/1.1 app) fail no more h2spec cases than Go's own h2c server does in
// the same run. The machine is shared: a listener that fails more is run
// again, with the baseline, once.
//
// On the outbound listener h2spec's :authority (its host:port) names no
// service, so every request is refused (503 no-route) before its body is
// read: the server reads a small unread body before the refusal goes out,
// so that the malformed-body cases (8.1.2.6) get their stream error.
func TestH2specAgainstAgentListeners(t *testing.T) {
	m := startProtoMesh(t, false)
	const callerIP = "127.0.0.106"
	caller := startAgent(t, callerIP, "h2spec-caller", startApp(t, callerIP, "h2spec-caller", nil), func(c *config.Config) {
		c.Agent.Upstreams = []config.Upstream{{Service: "web", Listen: net.JoinHostPort(callerIP, strconv.Itoa(meshtest.FreePort(callerIP)))}}
	})
	base := serveApp(t, protoCaller, true, true, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	for _, l := range []struct{ name, addr string }{
		{"upstream listener to an HTTP/1.1 app", caller.Addr("upstream web")},
		{"inbound to an HTTP/1.1 app", m.web.Addr("inbound")},
		{"outbound, every request refused", caller.Addr("outbound")},
	} {
		t.Run(l.name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				want, n := h2specFailures(t, base.addr)
				got, n2 := h2specFailures(t, l.addr)
				t.Logf("h2spec: Go's h2c server failed %d of %d %v; the agent's %s failed %d of %d %v", len(want), n, want, l.name, len(got), n2, got)
				// Content-Length mismatches get their stream error even
				// when the request is refused unread (Go's own server
				// leaves that to a race).
				badLength := slices.ContainsFunc(got, func(c string) bool { return strings.HasPrefix(c, "http2/8.1.2.6/") })
				if len(got) <= len(want) && !badLength {
					return
				}
				if attempt == 2 {
					t.Fatalf("the agent's %s fails %d h2spec cases %v, Go's own h2c server %d", l.name, len(got), got, len(want))
				}
			}
		})
	}
}
