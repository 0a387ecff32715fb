package gateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/gateway"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

var consul *meshtest.Consul

func TestMain(m *testing.M) { meshtest.RunWithConsul(m, &consul) }

var (
	meshOnce sync.Once
	meshBin  string
	meshErr  error
)

// mesh builds the binary once per package run (kept until the process
// ends: each test's TempDir would go with its test).
func mesh(t *testing.T) string {
	meshOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gateway-test-mesh")
		if err != nil {
			meshErr = err
			return
		}
		meshBin = filepath.Join(dir, "mesh")
		cmd := exec.Command("go", "build", "-o", meshBin, ".")
		cmd.Dir = meshtest.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			meshErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if meshErr != nil {
		t.Fatal(meshErr)
	}
	return meshBin
}

// startApp serves a real HTTP app on host: it answers with its name and
// the request headers it received, as JSON.
func startApp(t *testing.T, host, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Internal-Build", "1234") // a header routes may strip
		_ = json.NewEncoder(w).Encode(map[string]any{"app": name, "path": r.URL.Path, "headers": r.Header})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// startAgent runs `mesh agent` in front of an app on host and returns its
// inbound address once Consul has the app passing.
func startAgent(t *testing.T, host, service string, appPort int) string {
	t.Helper()
	return startAgentEnv(t, nil, host, service, appPort)
}

// startAgentEnv is startAgent with extra environment (MESH_... settings).
func startAgentEnv(t *testing.T, env []string, host, service string, appPort int) string {
	t.Helper()
	ports := meshtest.FreePorts(host, 3)
	inbound := net.JoinHostPort(host, strconv.Itoa(ports[0]))
	meshtest.StartProcess(t, env, mesh(t), "agent", "--service", service, "--app-port", strconv.Itoa(appPort),
		"--app-address", host, "--inbound-addr", inbound,
		"--outbound-addr", net.JoinHostPort(host, strconv.Itoa(ports[1])),
		"--admin-addr", net.JoinHostPort(host, strconv.Itoa(ports[2])),
		"--consul-addr", consul.Addr, "--node", "vm-"+host, "--cache-dir", t.TempDir(), "--drain-period", "0s",
		"--app-protocol", "http1", "--log-format", "text")
	meshtest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + net.JoinHostPort(host, strconv.Itoa(ports[2])) + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("agent %s not ready: %d", service, resp.StatusCode)
		}
		return nil
	})
	return inbound
}

// controlPlane is a go-control-plane ADS server standing in for mesh
// control's gateway translation: the test sets the gateway node's
// standard Envoy resources (listener with jwt_authn, route configuration,
// clusters and endpoints).
type controlPlane struct {
	addr  string
	cache cache.SnapshotCache
	ver   int
	mu    sync.Mutex
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{cache: cache.NewSnapshotCache(false, cache.IDHash{}, nil)}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, server.NewServer(context.Background(), cp.cache, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	cp.addr = ln.Addr().String()
	return cp
}

// gwConfig is what the test routes: services (name -> agent inbound
// addresses), the route configuration and the JWT filter.
type gwConfig struct {
	services map[string][]string
	routes   *routev3.RouteConfiguration
	jwt      *jwtv3.JwtAuthentication
}

func (cp *controlPlane) set(t *testing.T, node string, c gwConfig) {
	t.Helper()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.ver++
	by := map[resource.Type][]types.Resource{}
	for name, addrs := range c.services {
		by[resource.ClusterType] = append(by[resource.ClusterType], &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
			ConnectTimeout: nil,
		})
		var lbs []*endpointv3.LbEndpoint
		for _, a := range addrs {
			h, p, _ := net.SplitHostPort(a)
			port, _ := strconv.Atoi(p)
			lbs = append(lbs, &endpointv3.LbEndpoint{HealthStatus: corev3.HealthStatus_HEALTHY,
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: h,
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}}})
		}
		by[resource.EndpointType] = append(by[resource.EndpointType], &endpointv3.ClusterLoadAssignment{ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs, LoadBalancingWeight: wrapperspb.UInt32(1)}}})
	}
	c.routes.Name = wire.GatewayRoute
	by[resource.RouteType] = []types.Resource{c.routes}
	var filters []*hcmv3.HttpFilter
	if c.jwt != nil {
		filters = append(filters, &hcmv3.HttpFilter{Name: wire.JWTAuthnFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, c.jwt)}})
	}
	filters = append(filters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}})
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "gateway", HttpFilters: filters,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: wire.GatewayRoute,
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}}
	by[resource.ListenerType] = []types.Resource{&listenerv3.Listener{Name: wire.GatewayHTTPSListener,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0",
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8443}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: wire.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}}}}
	snap, err := cache.NewSnapshot(strconv.Itoa(cp.ver), by)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// testCA issues server certificates for the test's names.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for names (and its key) into dir.
func (ca *testCA) issue(t *testing.T, dir, file string, serial int64, names ...string) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, file+".crt"), filepath.Join(dir, file+".key")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}

// writeFile replaces path atomically (as an operator's deploy would).
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// issuer signs JWTs with an RSA key published in a JWKS file.
type issuer struct {
	key  *rsa.PrivateKey
	kid  string
	jwks string
	iss  string
}

func newIssuer(t *testing.T, dir string) *issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key, kid: "k1", jwks: filepath.Join(dir, "jwks.json"), iss: "https://idp.test"}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}}
	b, _ := json.Marshal(set)
	writeFile(t, is.jwks, b)
	return is
}

func (is *issuer) token(t *testing.T, sub string, ttl time.Duration, extra map[string]any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: is.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", is.kid))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c := jwt.Claims{Issuer: is.iss, Subject: sub, Audience: jwt.Audience{"shop"}, Expiry: jwt.NewNumericDate(now.Add(ttl)),
		IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute))}
	b := jwt.Signed(sig).Claims(c)
	if extra != nil {
		b = b.Claims(extra)
	}
	s, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwtFilter is the jwt_authn config: provider idp (x-user-id from sub),
// requirement "user" (required) and "maybe" (optional).
func (is *issuer) jwtFilter() *jwtv3.JwtAuthentication {
	return &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"idp": {
			Issuer: is.iss, Audiences: []string{"shop"},
			JwksSourceSpecifier: &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
				Specifier: &corev3.DataSource_Filename{Filename: is.jwks}}},
			ClaimToHeaders: []*jwtv3.JwtClaimToHeader{{HeaderName: "x-user-id", ClaimName: "sub"}},
		}},
		RequirementMap: map[string]*jwtv3.JwtRequirement{
			"user": {RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "idp"}},
		},
	}
}

// startGateway runs a gateway in this process against the control plane.
type gw struct {
	g      *gateway.Gateway
	node   string
	client *http.Client
	https  string
}

func startGateway(t *testing.T, cp *controlPlane, ca *testCA, mutate func(*config.Config)) *gw {
	t.Helper()
	dir := t.TempDir()
	crt, key := ca.issue(t, dir, "shop", 10, "shop.test", "*.shop.test")
	cfg := config.Default()
	gc := &cfg.Gateway
	gc.HTTPSAddr, gc.HTTPAddr, gc.AdminAddr = "127.0.0.80:0", "127.0.0.80:0", "127.0.0.80:0"
	gc.ControlPlane = []string{cp.addr}
	gc.Node = fmt.Sprintf("gwtest-%d", time.Now().UnixNano())
	gc.CacheDir = dir
	gc.DrainPeriod = 0
	gc.TLS.Certificates = []config.CertificateFiles{{CertFile: crt, KeyFile: key}}
	gc.TLS.ReloadInterval = 200 * time.Millisecond
	cfg.Consul.Addr = consul.Addr
	cfg.Observability.AccessLog.Enabled = false
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(config.RoleGateway); err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway run: %v", err)
		}
	})
	meshtest.Eventually(t, 10*time.Second, func() error {
		if g.Addr("https") == "" {
			return fmt.Errorf("not listening")
		}
		return nil
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "shop.test"}, ForceAttemptHTTP2: true,
		MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &gw{g: g, node: gc.Name + "-" + gc.Node, https: g.Addr("https"),
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// get sends a request for host through the gateway.
func (g *gw) get(t *testing.T, host, path string, hdr map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	return g.do(t, "GET", host, path, hdr)
}

func (g *gw) do(t *testing.T, method, host, path string, hdr map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "https://"+g.https+path, nil)
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}

// clientFrom is a client whose connections come from ip.
func clientFrom(g *gw, ca *testCA, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "shop.test"}, ForceAttemptHTTP2: true,
		DialContext: d.DialContext}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
