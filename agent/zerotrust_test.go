package agent_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/identity/identitytest"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// The zero-trust tests run both halves of issue 11 together: agents get
// their certificates from `mesh control`'s CA with join tokens (xDS auth
// required) and use them for mTLS between each other.

// Loopback "VMs" of the zero-trust tests.
const (
	ztWeb    = "127.0.0.151"
	ztOrders = "127.0.0.152"
)

const ztWebID = "spiffe://mesh.local/ns/default/svc/ztweb"

// ztOrdersApp answers 200 only to a caller handed to it as ztweb's
// verified identity (so every request of a load proves mTLS), 500 else;
// with plaintextOK a caller without an identity is served too.
func ztOrdersApp(t *testing.T, plaintextOK bool, webID string) *app {
	return startApp(t, ztOrders, "ztorders", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "ztorders")
		peer := r.Header.Get(wire.PeerIdentityHeader)
		if peer != webID && (!plaintextOK || peer != "") {
			http.Error(w, "peer="+peer, http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "peer=%s", peer)
	})
}

// ztPair is mesh control (mode as control.mtls.default_mode, cert_ttl
// ttl, xDS auth required) and two agents, ztorders and ztweb, each with a
// join token minted by `mesh control token create`.
type ztPair struct {
	cp                    *control
	caDir                 string
	web, orders           *runningAgent
	webApp, ordersApp     *app
	webTok, ordersTok     string
	webCache, ordersCache string
}

func startZTPair(t *testing.T, mode, ttl string, plaintextOK bool) *ztPair {
	return startZTPairIn(t, mode, ttl, plaintextOK, "", ztWebID)
}

// startZTPairIn is startZTPair with control.ca fields caExtra, orders
// serving only webID (and plain text with plaintextOK).
func startZTPairIn(t *testing.T, mode, ttl string, plaintextOK bool, caExtra, webID string) *ztPair {
	t.Helper()
	p := &ztPair{caDir: filepath.Join(t.TempDir(), "ca"), webCache: t.TempDir(), ordersCache: t.TempDir()}
	p.cp = newControl(t, controlOptions{caDir: p.caDir, certTTL: ttl, auth: "required", caExtra: caExtra,
		extra: "  mtls: {default_mode: " + mode + "}\n"})
	// Tokens minted from mesh control's own config (control.ca: its
	// directory, trust domain and namespace), as an operator would.
	mint := func(service string) string {
		file := filepath.Join(t.TempDir(), service+".token")
		out, err := exec.Command(p.cp.bin, "control", "token", "create", "--service", service, "--ttl", "1h", "--config", p.cp.cfgPath, "--output", file).CombinedOutput()
		if err != nil {
			t.Fatalf("token create: %v\n%s", err, out)
		}
		return file
	}
	p.ordersTok, p.webTok = mint("ztorders"), mint("ztweb")
	p.ordersApp = ztOrdersApp(t, plaintextOK, webID)
	p.orders = startZTAgent(t, ztOrders, "ztorders", p.ordersApp, p.cp, p.ordersTok, p.ordersCache)
	waitPassing(t, "ztorders", 1)
	p.webApp = startApp(t, ztWeb, "ztweb", nil)
	p.web = startZTAgent(t, ztWeb, "ztweb", p.webApp, p.cp, p.webTok, p.webCache)
	waitEndpoints(t, p.web, "ztorders", 1)
	return p
}

// startZTAgent starts an agent with a join token and waits until it holds
// a certificate from mesh control.
func startZTAgent(t *testing.T, ip, service string, a *app, cp *control, tok, cache string) *runningAgent {
	t.Helper()
	ra := startAgent(t, ip, service, a, withIdentity(cp, tok, cache))
	meshtest.Eventually(t, 30*time.Second, func() error {
		if d := identityOf(t, ra); d.Identity.Serial == "" {
			return fmt.Errorf("%s holds no certificate yet", service)
		}
		return nil
	})
	return ra
}

// call makes one request web → orders and returns the body; it fails the
// test unless the answer is 200.
func (p *ztPair) call(t *testing.T) string {
	t.Helper()
	var body string
	// The first call may race the Cluster's UpstreamTlsContext reaching web.
	meshtest.Eventually(t, 30*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.web.Addr("outbound")+"/x", nil)
		req.Host = "ztorders"
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("web → orders: %d %s %q %v", resp.StatusCode, resp.Header.Get("x-mesh-reason"), b, err)
		}
		body = string(b)
		return nil
	})
	return body
}

// TestZeroTrustStrict: certificates from mesh control, strict mode from
// control.mtls.default_mode: web → orders flows over mTLS (the app is
// handed web's SPIFFE ID, handshakes are counted on both sides), and a
// plaintext client or one with another CA's certificate is refused at the
// handshake.
func TestZeroTrustStrict(t *testing.T) {
	p := startZTPair(t, wire.MTLSStrict, "1h", false)
	if body := p.call(t); body != "peer="+ztWebID {
		t.Fatalf("web → orders: %q, want peer=%s", body, ztWebID)
	}
	if d := identityOf(t, p.orders); d.Identity.SPIFFEID != "spiffe://mesh.local/ns/default/svc/ztorders" {
		t.Errorf("orders holds %q", d.Identity.SPIFFEID)
	}
	if n := metricValue(t, p.orders.Addr("admin"), "mesh_tls_handshakes_total", "side", "server", "result", "ok"); n < 1 {
		t.Errorf("orders counted %v server handshakes, want at least 1", n)
	}
	if n := metricValue(t, p.web.Addr("admin"), "mesh_tls_handshakes_total", "side", "client", "result", "ok"); n < 1 {
		t.Errorf("web counted %v client handshakes, want at least 1", n)
	}
	inbound := p.orders.Addr("inbound")
	if got, err := rawExchange(inbound); err == nil {
		t.Fatalf("plaintext client in strict mode was served: %s", got)
	}
	other := identitytest.NewCA(t, "mesh.local")
	certPEM, keyPEM := other.KeyPair(t, "ztweb")
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsGet(inbound, &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}); err == nil { //nolint:gosec // the client is the attacker
		t.Fatal("a client with another CA's certificate was served")
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		s := seriesOf(scrapeAgent(t, p.orders.Addr("admin")), "mesh_tls_handshake_errors_total")
		if s[lbl("side", "server", "reason", "plaintext")] < 1 || s[lbl("side", "server", "reason", "unknown-authority")] < 1 {
			return fmt.Errorf("handshake errors %v, want a plaintext and an unknown-authority refusal", s)
		}
		return nil
	})
}

// ztLoad is the steady load of the rotation test: several sequential
// loops at once (keep-alive, so pooled agent-to-agent connections) plus,
// on demand, bursts on fresh connections.
type ztLoad struct{ loops []*load }

func startZTLoad(url, host string, n int) *ztLoad {
	z := &ztLoad{}
	for i := 0; i < n; i++ {
		z.loops = append(z.loops, startLoad(url, host))
	}
	return z
}

func (z *ztLoad) ok() (n int64) {
	for _, l := range z.loops {
		n += l.ok.Load()
	}
	return n
}

func (z *ztLoad) check(t *testing.T, phase string) {
	t.Helper()
	for _, l := range z.loops {
		l.check(t, phase)
	}
}

func (z *ztLoad) stop() {
	for _, l := range z.loops {
		l.stop()
	}
}

// TestZeroTrustRotationUnderLoad: strict mTLS with certificates from mesh
// control (cert_ttl 3s): under a steady load (four concurrent loops and
// bursts on new connections) both agents rotate at least three times, then
// the root is rotated (overlapping bundle over SDS) and, once both agents
// renewed from the new root, the old one retired: no request fails.
func TestZeroTrustRotationUnderLoad(t *testing.T) {
	p := startZTPair(t, wire.MTLSStrict, "3s", false)
	p.call(t)
	url := "http://" + p.web.Addr("outbound") + "/x"
	z := startZTLoad(url, "ztorders", 4)
	stopped := false
	defer func() {
		if !stopped {
			z.stop()
		}
	}()
	bursts := 0
	seen := map[*runningAgent]map[string]bool{p.orders: {}, p.web: {}}
	waitRotating := func(n int, timeout time.Duration) {
		t.Helper()
		meshtest.Eventually(t, timeout, func() error {
			burst(t, url, "ztorders", 4)
			bursts++
			for ra, s := range seen {
				if serial := identityOf(t, ra).Identity.Serial; serial != "" {
					s[serial] = true
				}
			}
			for _, s := range seen {
				if len(s) < n {
					return fmt.Errorf("%d certificates seen, want %d", len(s), n)
				}
			}
			return nil
		})
	}
	waitRotating(4, 90*time.Second)
	z.check(t, "three rotations on both agents")
	okRot := z.ok()
	t.Logf("leaf rotations: %d and %d certificates seen on orders and web, %d requests ok, %d bursts", len(seen[p.orders]), len(seen[p.web]), okRot, bursts)

	// Root rotation: both agents get the two-root bundle over SDS, then
	// renew (twice, so from the new root) under the same load.
	if out, err := exec.Command(p.cp.bin, "control", "ca", "rotate", "--ca-dir", p.caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca rotate: %v\n%s", err, out)
	}
	meshtest.Eventually(t, 60*time.Second, func() error {
		burst(t, url, "ztorders", 4)
		for _, ra := range []*runningAgent{p.orders, p.web} {
			if n := len(identityOf(t, ra).Identity.BundleRoots); n != 2 {
				return fmt.Errorf("bundle holds %d roots, want 2", n)
			}
		}
		return nil
	})
	for _, s := range seen {
		clear(s)
	}
	waitRotating(3, 60*time.Second)
	z.check(t, "root rotation")
	t.Logf("root rotation: %d requests ok", z.ok()-okRot)
	okRoot := z.ok()

	// Retire the old root: agents get a one-root bundle and keep serving.
	if out, err := exec.Command(p.cp.bin, "control", "ca", "retire-roots", "--ca-dir", p.caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca retire-roots: %v\n%s", err, out)
	}
	meshtest.Eventually(t, 60*time.Second, func() error {
		burst(t, url, "ztorders", 4)
		for _, ra := range []*runningAgent{p.orders, p.web} {
			if n := len(identityOf(t, ra).Identity.BundleRoots); n != 1 {
				return fmt.Errorf("bundle holds %d roots, want 1", n)
			}
		}
		return nil
	})
	for _, s := range seen {
		clear(s)
	}
	waitRotating(2, 60*time.Second)
	z.stop()
	stopped = true
	z.check(t, "roots retired")
	t.Logf("retire-roots: %d requests ok; total %d, 0 failed", z.ok()-okRoot, z.ok())
	if z.ok() < 200 {
		t.Errorf("only %d requests served", z.ok())
	}
}

// TestZeroTrustControlDown: with mesh control stopped, both agents keep
// serving mTLS calls, and web restarted meanwhile serves from the
// certificate in its disk cache.
func TestZeroTrustControlDown(t *testing.T) {
	p := startZTPair(t, wire.MTLSStrict, "1h", false)
	p.call(t)
	serial := identityOf(t, p.web).Identity.Serial
	// Strict reaches orders with its inbound listener from mesh control;
	// the control-down phase starts once orders holds it.
	meshtest.Eventually(t, 30*time.Second, func() error {
		if dump := strings.ReplaceAll(fetch(t, "http://"+p.orders.Addr("admin")+"/config_dump"), " ", ""); !strings.Contains(dump, `"inbound_mode":"strict"`) {
			return fmt.Errorf("orders' inbound mode is not strict yet")
		}
		return nil
	})
	p.cp.stop()
	for i := 0; i < 20; i++ {
		if body := p.call(t); body != "peer="+ztWebID {
			t.Fatalf("with mesh control down: %q", body)
		}
	}
	p.web.stop(t)
	p.web = startAgent(t, ztWeb, "ztweb", p.webApp, withIdentity(p.cp, p.webTok, p.webCache))
	if d := identityOf(t, p.web); d.Identity.Serial != serial {
		t.Fatalf("restarted web holds %q, want the cached %q", d.Identity.Serial, serial)
	}
	before := metricValue(t, p.orders.Addr("admin"), "mesh_tls_handshakes_total", "side", "server", "result", "ok")
	for i := 0; i < 20; i++ {
		if body := p.call(t); body != "peer="+ztWebID {
			t.Fatalf("restarted web with mesh control down: %q", body)
		}
	}
	if after := metricValue(t, p.orders.Addr("admin"), "mesh_tls_handshakes_total", "side", "server", "result", "ok"); after <= before {
		t.Errorf("no new handshake from the restarted web (%v → %v)", before, after)
	}
	if got, err := rawExchange(p.orders.Addr("inbound")); err == nil {
		t.Fatalf("plaintext client served in strict mode with mesh control down: %s", got)
	}

	// orders restarted while mesh control is down starts strict (its
	// cached xDS config; its own file says permissive): from its first
	// connection a plaintext client is refused, never served, and it
	// registers with its cached certificate.
	// Same inbound port: web's endpoints come from its cached xDS config.
	inbound := p.orders.Addr("inbound")
	p.orders.stop(t)
	ident := withIdentity(p.cp, p.ordersTok, p.ordersCache)
	p.orders = launchAgent(t, ztOrders, "ztorders", p.ordersApp.port, func(c *config.Config) {
		ident(c)
		c.Agent.InboundAddr = inbound
	}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
	refused := 0.0
	meshtest.Eventually(t, 20*time.Second, func() error {
		if got, err := rawExchange(p.orders.Addr("inbound")); err == nil {
			t.Fatalf("restarted orders served a plaintext client with mesh control down: %s", got)
		}
		if r, err := metricOf(p.orders.Addr("admin"), "mesh_tls_handshake_errors_total", "side", "server", "reason", "plaintext"); err != nil || r < 1 {
			return fmt.Errorf("restarted orders has not refused a plaintext client yet (%v, %v)", r, err)
		} else {
			refused = r
		}
		return nil
	})
	t.Logf("restarted orders refused %v plaintext connections", refused)
	waitPassing(t, "ztorders", 1)
	for i := 0; i < 10; i++ {
		if body := p.call(t); body != "peer="+ztWebID {
			t.Fatalf("web → restarted orders with mesh control down: %q", body)
		}
	}
}

// TestZeroTrustPermissive: in permissive mode web's calls still go over
// mTLS with certificates from mesh control, a plaintext client is served
// without an identity, and both are counted.
func TestZeroTrustPermissive(t *testing.T) {
	p := startZTPair(t, wire.MTLSPermissive, "1h", true)
	if body := p.call(t); body != "peer="+ztWebID {
		t.Fatalf("web → orders: %q, want peer=%s", body, ztWebID)
	}
	if got, err := rawExchange(p.orders.Addr("inbound")); err != nil || got != "200 peer=" {
		t.Fatalf("plaintext call in permissive mode: %q, %v; want served without an identity", got, err)
	}
	s := seriesOf(scrapeAgent(t, p.orders.Addr("admin")), "mesh_inbound_connections_total")
	if s[lbl("tls", "mtls")] < 1 || s[lbl("tls", "plaintext")] < 1 {
		t.Fatalf("inbound connections %v, want both mtls and plaintext counted", s)
	}
}

// TestZeroTrustInstanceWithoutCertificate: a second ztorders instance
// whose join token mesh control refuses holds no certificate, so in
// strict mode (known from its own config: mesh control refuses it config
// too) it could serve no caller: it does not register in Consul, says so
// on /ready, serves nothing, and web's calls all reach the instance that
// has a certificate: no request fails.
func TestZeroTrustInstanceWithoutCertificate(t *testing.T) {
	p := startZTPair(t, wire.MTLSStrict, "1h", false)
	p.call(t)
	const second = "127.0.0.153"
	bad := startApp(t, second, "ztorders-nocert", nil)
	// A token for another service: mesh control signs nothing for it.
	ident := withIdentity(p.cp, p.webTok, t.TempDir())
	ba := launchAgent(t, second, "ztorders", bad.port, func(c *config.Config) {
		ident(c)
		c.Control.MTLS.DefaultMode = wire.MTLSStrict
	}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
	meshtest.Eventually(t, 20*time.Second, func() error {
		if body, err := getBody("http://" + ba.Addr("admin") + "/ready"); err != nil || !strings.Contains(body, "waiting for a certificate from mesh control") {
			return fmt.Errorf("/ready of the instance without a certificate: %s %v", body, err)
		}
		return nil
	})
	url := "http://" + p.web.Addr("outbound") + "/x"
	l := startLoad(url, "ztorders")
	for i := 0; i < 10; i++ {
		burst(t, url, "ztorders", 4)
		time.Sleep(200 * time.Millisecond)
		if entries, _, err := consul.Client.Catalog().Service("ztorders", "", nil); err != nil || len(entries) != 1 {
			t.Fatalf("ztorders in consul: %d instances (%v), want only the one with a certificate", len(entries), err)
		}
	}
	l.stop()
	t.Logf("%d requests ok, %d failed (%v), served by the instance without a certificate: %d", l.ok.Load(), l.failed.Load(), l.errs, bad.served.Load())
	l.check(t, "an instance without a certificate beside one with")
	if n := bad.served.Load(); n != 0 {
		t.Errorf("the instance without a certificate served %d requests in strict mode", n)
	}

	// A third instance, strict by its own config too, with a good token:
	// it registers once its certificate arrives.
	const third = "127.0.0.154"
	good := startApp(t, third, "ztorders-third", nil)
	goodIdent := withIdentity(p.cp, p.ordersTok, t.TempDir())
	startAgent(t, third, "ztorders", good, func(c *config.Config) {
		goodIdent(c)
		c.Control.MTLS.DefaultMode = wire.MTLSStrict
	})
	waitPassing(t, "ztorders", 2)
}

// TestZeroTrustOwnTrustDomain: with control.ca trust_domain and namespace
// set, the issued SPIFFE IDs carry them and the Cluster's
// UpstreamTlsContext asks for the same: strict mTLS flows.
func TestZeroTrustOwnTrustDomain(t *testing.T) {
	const webID = "spiffe://corp.example/ns/prod/svc/ztweb"
	p := startZTPairIn(t, wire.MTLSStrict, "1h", false, "trust_domain: corp.example, namespace: prod", webID)
	if d := identityOf(t, p.orders); d.Identity.SPIFFEID != "spiffe://corp.example/ns/prod/svc/ztorders" {
		t.Errorf("orders holds %q", d.Identity.SPIFFEID)
	}
	if body := p.call(t); body != "peer="+webID {
		t.Fatalf("web → orders: %q, want peer=%s", body, webID)
	}
	// A token minted against the directory alone (default trust domain)
	// would ask for identities this CA never issues: refused, naming why.
	out, err := exec.Command(p.cp.bin, "control", "token", "create", "--service", "ztweb", "--ca-dir", p.caDir, "--output", filepath.Join(t.TempDir(), "t")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is for trust domain corp.example, not control.ca.trust_domain mesh.local") {
		t.Fatalf("token create --ca-dir for a corp.example CA: %v\n%s", err, out)
	}
}

// getBody is an HTTP GET's body, or the error (an agent still starting).
func getBody(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metricOf is one series of an agent's /metrics, or the error while its
// admin listener is not up.
func metricOf(admin, name string, kv ...string) (float64, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	return seriesOf(mfs, name)[lbl(kv...)], nil
}
