package agent_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/identity/identitytest"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// Loopback "VMs" of the mTLS tests.
const (
	mtlsWeb    = "127.0.0.141" // the caller's agent
	mtlsOrders = "127.0.0.142" // the callee (an HTTP app echoing who called)
	mtlsH2     = "127.0.0.143" // an h2c app
	mtlsRedis  = "127.0.0.144" // redis-server behind a tcp agent
	mtlsGRPC   = "127.0.0.145" // the gRPC interop server
)

// withIdentity gives an agent certificate files from ca for its service
// (written to a fresh directory) and the inbound mode; it returns the
// directory so that a test can rotate them.
func withFileIdentity(t *testing.T, ca *identitytest.CA, service, mode string, dir *string) func(*config.Config) {
	*dir = t.TempDir()
	f := ca.WriteFiles(t, *dir, service, time.Hour, nil)
	return func(c *config.Config) {
		c.Agent.TLS.CertFile, c.Agent.TLS.KeyFile, c.Agent.TLS.BundleFile = f.Cert, f.Key, f.Bundle
		c.Control.MTLS.DefaultMode = mode
	}
}

// whoApp answers with the caller identity the app was handed.
func whoApp(t *testing.T, ip string) *app {
	return startApp(t, ip, "orders", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "orders")
		fmt.Fprintf(w, "peer=%s", r.Header.Get(wire.PeerIdentityHeader))
	})
}

func metricValue(t *testing.T, admin, name string, kv ...string) float64 {
	t.Helper()
	return seriesOf(scrapeAgent(t, admin), name)[lbl(kv...)]
}

// rawExchange sends a plaintext HTTP/1.1 request on a fresh connection
// and returns the status line, or the error that ended the connection.
func rawExchange(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: orders\r\n%s: spiffe://mesh.local/ns/default/svc/admin\r\n\r\n", wire.PeerIdentityHeader)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return fmt.Sprintf("%d %s", resp.StatusCode, b), nil
}

// mtlsPair starts orders (mode) and web, both with identities from ca.
func mtlsPair(t *testing.T, ca *identitytest.CA, mode string) (web, orders *runningAgent, webDir, ordersDir string) {
	t.Helper()
	ordersApp := whoApp(t, mtlsOrders)
	orders = startAgent(t, mtlsOrders, "orders", ordersApp, withFileIdentity(t, ca, "orders", mode, &ordersDir))
	waitPassing(t, "orders", 1)
	webApp := startApp(t, mtlsWeb, "web", nil)
	web = startAgent(t, mtlsWeb, "web", webApp, withFileIdentity(t, ca, "web", mode, &webDir))
	return web, orders, webDir, ordersDir
}

// Two agents in strict mode: the call flows over mTLS, the app is handed
// the caller's verified SPIFFE ID (a forged one is dropped), and a
// plaintext client or one with another CA's certificate is refused at
// the handshake.
func TestMTLSStrict(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	web, orders, _, _ := mtlsPair(t, ca, wire.MTLSStrict)

	req, _ := http.NewRequest(http.MethodGet, "http://"+web.Addr("outbound")+"/x", nil)
	req.Host = "orders"
	req.Header.Set(wire.PeerIdentityHeader, "spiffe://mesh.local/ns/default/svc/admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "peer=spiffe://mesh.local/ns/default/svc/web"; resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("call over mTLS: %d %q, want 200 %q", resp.StatusCode, b, want)
	}
	if n := metricValue(t, orders.Addr("admin"), "mesh_tls_handshakes_total", "side", "server", "result", "ok"); n < 1 {
		t.Errorf("orders counted %v server handshakes, want at least 1", n)
	}
	if n := metricValue(t, web.Addr("admin"), "mesh_tls_handshakes_total", "side", "client", "result", "ok"); n < 1 {
		t.Errorf("web counted %v client handshakes, want at least 1", n)
	}
	if n := metricValue(t, orders.Addr("admin"), "mesh_inbound_connections_total", "tls", "mtls"); n < 1 {
		t.Errorf("orders counted %v mtls connections, want at least 1", n)
	}

	inbound := orders.Addr("inbound")
	// A plaintext client: no HTTP answer at all, the connection is closed.
	if got, err := rawExchange(inbound); err == nil {
		t.Fatalf("plaintext client in strict mode was served: %s", got)
	}
	if n := metricValue(t, orders.Addr("admin"), "mesh_tls_handshake_errors_total", "side", "server", "reason", "plaintext"); n != 1 {
		t.Errorf("plaintext refusals counted %v, want 1", n)
	}
	// A client with a certificate from another CA (same trust domain).
	other := identitytest.NewCA(t, "mesh.local")
	certPEM, keyPEM := other.KeyPair(t, "web")
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tlsGet(inbound, &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the client is the attacker
	if err == nil {
		t.Fatal("a client with another CA's certificate was served")
	}
	// TLS without a client certificate.
	if _, err := tlsGet(inbound, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}); err == nil { //nolint:gosec // test client
		t.Fatal("a TLS client without a certificate was served in strict mode")
	}
	// TLS 1.2 is not offered.
	if _, err := tlsGet(inbound, &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err == nil { //nolint:gosec // test client
		t.Fatal("TLS 1.2 accepted")
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		s := seriesOf(scrapeAgent(t, orders.Addr("admin")), "mesh_tls_handshake_errors_total")
		if s[lbl("side", "server", "reason", "unknown-authority")] != 1 || s[lbl("side", "server", "reason", "no-client-cert")] != 1 ||
			s[lbl("side", "server", "reason", "unsupported-version")] != 1 {
			return fmt.Errorf("handshake errors %v, want one unknown-authority, one no-client-cert, one unsupported-version", s)
		}
		return nil
	})
	// The peer cert a real mesh client sees is orders'.
	mine, mineKey := ca.KeyPair(t, "web")
	minePair, _ := tls.X509KeyPair(mine, mineKey)
	cs, err := tlsGet(inbound, &tls.Config{Certificates: []tls.Certificate{minePair}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // inspected below
	if err != nil {
		t.Fatalf("a client with a mesh certificate: %v", err)
	}
	if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].URIs[0].String() != "spiffe://mesh.local/ns/default/svc/orders" || cs.Version != tls.VersionTLS13 {
		t.Fatalf("orders' agent presented %v (TLS %x)", cs.PeerCertificates[0].URIs, cs.Version)
	}

	// /config_dump shows the identity and the mode.
	var d struct {
		MTLS struct {
			InboundMode string `json:"inbound_mode"`
			Identity    string
		}
	}
	_, body := get(t, "http://"+orders.Addr("admin")+"/config_dump", "")
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	if d.MTLS.InboundMode != "strict" || d.MTLS.Identity != "spiffe://mesh.local/ns/default/svc/orders" {
		t.Fatalf("config_dump mtls: %+v", d.MTLS)
	}
	if strings.Contains(body, "PRIVATE KEY") {
		t.Fatal("config_dump shows a private key")
	}
}

// tlsGet does a TLS handshake with addr under cfg and one HTTP/1.1
// request; it returns the connection state once a response came back.
func tlsGet(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: orders\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return tls.ConnectionState{}, errors.New(resp.Status)
	}
	return c.ConnectionState(), nil
}

// Permissive mode accepts mTLS and plain text and counts both; a
// plaintext caller is not handed an identity, even one it claims.
func TestMTLSPermissive(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	web, orders, _, _ := mtlsPair(t, ca, wire.MTLSPermissive)
	_, body := get(t, "http://"+web.Addr("outbound")+"/x", "orders")
	if body != "peer=spiffe://mesh.local/ns/default/svc/web" {
		t.Fatalf("mTLS call: %q", body)
	}
	got, err := rawExchange(orders.Addr("inbound"))
	if err != nil || got != "200 peer=" {
		t.Fatalf("plaintext call in permissive mode: %q, %v; want served without an identity", got, err)
	}
	s := seriesOf(scrapeAgent(t, orders.Addr("admin")), "mesh_inbound_connections_total")
	if s[lbl("tls", "mtls")] < 1 || s[lbl("tls", "plaintext")] < 1 {
		t.Fatalf("inbound connections %v, want both mtls and plaintext counted", s)
	}
}

// Certificates rotate under steady load with no failed request: the
// agents' files are rewritten (new serials) four times, then the root is
// rotated with an overlapping bundle. Under keep-alive load, handshakes
// stay near zero.
func TestMTLSRotationUnderLoad(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	web, orders, webDir, ordersDir := mtlsPair(t, ca, wire.MTLSStrict)
	serial := func(ra *runningAgent) string {
		var d struct{ MTLS struct{ Serial string } }
		_, body := get(t, "http://"+ra.Addr("admin")+"/config_dump", "")
		_ = json.Unmarshal([]byte(body), &d)
		return d.MTLS.Serial
	}
	l := startLoad("http://"+web.Addr("outbound")+"/x", "orders")
	defer l.stop()
	time.Sleep(500 * time.Millisecond)

	// Steady state: handshakes per second near zero.
	hs := func() float64 {
		return metricValue(t, orders.Addr("admin"), "mesh_tls_handshakes_total", "side", "server", "result", "ok")
	}
	before, ok0 := hs(), l.ok.Load()
	time.Sleep(3 * time.Second)
	after, ok1 := hs(), l.ok.Load()
	t.Logf("steady load: %d requests, %.0f handshakes in 3s", ok1-ok0, after-before)
	if after-before > 2 || ok1-ok0 < 50 {
		t.Fatalf("steady keep-alive load: %.0f handshakes for %d requests in 3s, want near zero handshakes", after-before, ok1-ok0)
	}

	rotate := func(c *identitytest.CA, bundle []byte) {
		for _, x := range []struct {
			ra      *runningAgent
			dir, sv string
		}{{orders, ordersDir, "orders"}, {web, webDir, "web"}} {
			old := serial(x.ra)
			c.WriteFiles(t, x.dir, x.sv, time.Hour, bundle)
			meshtest.Eventually(t, 10*time.Second, func() error {
				if s := serial(x.ra); s == old {
					return fmt.Errorf("%s still serves serial %s", x.sv, s)
				}
				return nil
			})
		}
		// A burst of concurrent requests opens new connections between
		// the agents, which use the new certificates; the pooled one the
		// steady load holds stays up.
		burst(t, "http://"+web.Addr("outbound")+"/x", "orders", 8)
		time.Sleep(2 * time.Second)
	}
	for i := 0; i < 4; i++ {
		rotate(ca, nil)
	}
	l.check(t, "four certificate rotations")
	// Root rotation: both roots in every bundle first, then leaves from
	// the new root, then the old root dropped.
	next := identitytest.NewCA(t, "mesh.local")
	both := append(append([]byte{}, ca.Bundle()...), next.Bundle()...)
	rotate(ca, both)
	rotate(next, both)
	rotate(next, nil)
	l.check(t, "root rotation")
	if n := hs(); n <= after {
		t.Fatalf("no handshake after the rotations (%v)", n)
	}
}

// burst sends n requests at once (new agent-to-agent connections) and
// fails the test if one fails.
func burst(t *testing.T, url, host string, n int) {
	t.Helper()
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Host = host
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("%s %s", resp.Status, resp.Header.Get("x-mesh-reason"))
				}
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("burst request: %v", err)
		}
	}
}

// HTTP/1.1, h2c, gRPC and raw TCP (Redis) over strict mTLS.
func TestMTLSProtocols(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	var d1, d2, d3, d4 string
	gl, err := net.Listen("tcp", mtlsGRPC+":0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	startAgent(t, mtlsGRPC, "grpcsvc", &app{port: gl.Addr().(*net.TCPAddr).Port}, func(c *config.Config) {
		withFileIdentity(t, ca, "grpcsvc", wire.MTLSStrict, &d4)(c)
		c.Agent.AppHealth = ""
		c.Agent.AppProtocol = config.AppProtocolGRPC
	})
	h2 := serveApp(t, mtlsH2, false, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s peer=%s", r.Proto, r.Header.Get(wire.PeerIdentityHeader))
	}))
	startAgent(t, mtlsH2, "h2app", h2, func(c *config.Config) {
		withFileIdentity(t, ca, "h2app", wire.MTLSStrict, &d1)(c)
		c.Agent.AppHealth = ""
		c.Agent.AppProtocol = config.AppProtocolHTTP2
	})
	rd := meshtest.StartRedis(t, mtlsRedis)
	_, rport, _ := net.SplitHostPort(rd.Addr)
	rp, _ := strconv.Atoi(rport)
	rdAgent := startAgent(t, mtlsRedis, "redis", &app{port: rp}, func(c *config.Config) {
		withFileIdentity(t, ca, "redis", wire.MTLSStrict, &d2)(c)
		c.Agent.AppHealth = ""
		c.Agent.AppProtocol = config.AppProtocolTCP
	})
	waitPassing(t, "h2app", 1)
	waitPassing(t, "redis", 1)
	waitPassing(t, "grpcsvc", 1)
	caller := startApp(t, mtlsWeb, "web", nil)
	redisListen := net.JoinHostPort(mtlsWeb, strconv.Itoa(meshtest.FreePort(mtlsWeb)))
	web := startAgent(t, mtlsWeb, "web", caller, func(c *config.Config) {
		withFileIdentity(t, ca, "web", wire.MTLSStrict, &d3)(c)
		c.Agent.Upstreams = []config.Upstream{{Service: "redis", Listen: redisListen, Protocol: config.UpstreamTCP}}
	})

	// h2c downstream to an h2 app; HTTP/1.1 downstream to it too.
	for name, client := range map[string]*http.Client{"h2c": h2cClient(t), "http1": h1Client(t)} {
		_, body := getWith(t, client, "http://"+web.Addr("outbound")+"/p", "h2app")
		if body != "HTTP/2.0 peer=spiffe://mesh.local/ns/default/svc/web" {
			t.Fatalf("%s to the h2 app over mTLS: %q", name, body)
		}
	}
	// gRPC: the interop cases through the outbound listener.
	interopCalls(t, grpcTo(t, web.Addr("outbound"), "grpcsvc"))
	// Redis through the tcp upstream listener.
	for i := 0; i < 3; i++ {
		if got, err := meshtest.RedisCommand(redisListen, "SET", "k", "v"+strconv.Itoa(i)); err != nil || got != "+OK" {
			t.Fatalf("redis SET over mTLS: %q, %v", got, err)
		}
	}
	if got, err := meshtest.RedisCommand(redisListen, "GET", "k"); err != nil || got != "v2" {
		t.Fatalf("redis GET over mTLS: %q, %v", got, err)
	}
	if n := metricValue(t, rdAgent.Addr("admin"), "mesh_inbound_connections_total", "tls", "mtls"); n < 4 {
		t.Fatalf("redis agent counted %v mtls connections, want 4", n)
	}
	// A plaintext redis client straight at the redis agent is refused.
	if got, err := meshtest.RedisCommand(rdAgent.Addr("inbound"), "GET", "k"); err == nil {
		t.Fatalf("plaintext redis client served in strict mode: %q", got)
	}
}

// With a control plane, the mode comes from `mesh control`'s config as
// standard Envoy resources: orders strict by control.services, the
// caller's agent dialing it over mTLS from the Cluster's
// UpstreamTlsContext, and a plaintext client refused.
func TestMTLSFromControlPlane(t *testing.T) {
	cp := newControl(t, controlOptions{extra: "  mtls:\n    default_mode: permissive\n  services:\n    orders:\n      mtls_mode: strict\n"})
	ca := identitytest.NewCA(t, "mesh.local")
	var od, wd string
	orders := startAgent(t, mtlsOrders, "orders", whoApp(t, mtlsOrders), func(c *config.Config) {
		withFileIdentity(t, ca, "orders", "", &od)(c)
		c.Agent.ControlPlane = []string{cp.xdsAddr}
	})
	waitPassing(t, "orders", 1)
	web := startAgent(t, mtlsWeb, "web", startApp(t, mtlsWeb, "web", nil), func(c *config.Config) {
		withFileIdentity(t, ca, "web", "", &wd)(c)
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.Upstreams = []config.Upstream{}
		c.Agent.Dependencies = []string{"orders"} // held from the start, before any call
	})
	meshtest.Eventually(t, 20*time.Second, func() error {
		var d struct {
			MTLS struct {
				InboundMode string `json:"inbound_mode"`
				Services    map[string]struct {
					Mode             string
					UpstreamIdentity string `json:"upstream_identity"`
				}
			}
		}
		for _, x := range []struct {
			ra   *runningAgent
			want string
		}{{orders, "strict"}, {web, "permissive"}} {
			_, body := get(t, "http://"+x.ra.Addr("admin")+"/config_dump", "")
			if err := json.Unmarshal([]byte(body), &d); err != nil {
				return err
			}
			if d.MTLS.InboundMode != x.want {
				return fmt.Errorf("inbound mode %q, want %q from the control plane", d.MTLS.InboundMode, x.want)
			}
		}
		if s := d.MTLS.Services["orders"]; s.UpstreamIdentity != "spiffe://mesh.local/ns/default/svc/orders" || s.Mode != "strict" {
			return fmt.Errorf("web's view of orders: %+v", s)
		}
		return nil
	})
	_, body := get(t, "http://"+web.Addr("outbound")+"/x", "orders")
	if body != "peer=spiffe://mesh.local/ns/default/svc/web" {
		t.Fatalf("call through the control plane's config: %q", body)
	}
	if got, err := rawExchange(orders.Addr("inbound")); err == nil {
		t.Fatalf("plaintext client served by a strict agent: %s", got)
	}
	// web is permissive: plain text is served, without an identity.
	if got, err := rawExchange(web.Addr("inbound")); err != nil || !strings.HasPrefix(got, "200") {
		t.Fatalf("plaintext client of the permissive agent: %q, %v", got, err)
	}
}
