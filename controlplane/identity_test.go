package controlplane_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// caPlane runs a control plane with its CA in a fresh directory and
// control.xds.auth set to auth; it returns the plane and a second handle
// on the same CA files (what `mesh control token create` opens).
func caPlane(t *testing.T, auth string, ttl time.Duration) (*plane, *ca.CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	p := startPlane(t, "", func(c *config.Config) {
		c.Control.CA.Dir = dir
		c.Control.XDS.Auth = auth
		if ttl > 0 {
			c.Control.CA.CertTTL = ttl
		}
	})
	tools, err := ca.Open(ca.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, tools, dir
}

// tlsConn dials the plane over TLS, verifying its certificate against the
// CA's bundle by the standard host-name check (127.0.0.1 is one of its
// default SANs), presenting cert when not nil and token as per-RPC
// metadata when not empty.
func tlsConn(t *testing.T, p *plane, caDir string, cert *tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	bundle, err := os.ReadFile(filepath.Join(caDir, "bundle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(p.xdsAddr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{wire.AuthorizationMetadata: "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// signFor sends a CSR for service over conn and returns the key, chain
// and bundle, or the error.
func signFor(t *testing.T, conn *grpc.ClientConn, service string) (tls.Certificate, string, error) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := identity.NewID(identity.DefaultTrustDomain, identity.DefaultNamespace, service)
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := &structpb.Struct{}
	if err := conn.Invoke(ctx, wire.CertificateSignMethod, wrapperspb.Bytes(csr), out); err != nil {
		return tls.Certificate{}, "", err
	}
	chain := out.GetFields()[wire.CertChainField].GetStringValue()
	keyPEM, _ := identity.EncodeKey(key)
	pair, err := tls.X509KeyPair([]byte(chain), keyPEM)
	if err != nil {
		t.Fatalf("issued chain: %v", err)
	}
	pair.Leaf, _ = x509.ParseCertificate(pair.Certificate[0])
	return pair, out.GetFields()[wire.BundleField].GetStringValue(), nil
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("got %v, want %v containing %q", err, code, contains)
	}
}

// TestSignOnlyWhatTheTokenAllows: a join token for web gets a certificate
// for web (its SPIFFE ID, chaining to the bundle) and not for orders; a
// revoked token and an expired one get nothing; a token over plaintext is
// refused; the certificate itself renews once the token is revoked.
func TestSignOnlyWhatTheTokenAllows(t *testing.T) {
	p, tools, dir := caPlane(t, wire.XDSAuthOptional, 0)
	tok, claims, err := tools.MintToken([]string{"web"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn := tlsConn(t, p, dir, nil, tok)
	cert, bundle, err := signFor(t, conn, "web")
	if err != nil {
		t.Fatalf("sign for web with a web token: %v", err)
	}
	if got := cert.Leaf.URIs[0].String(); got != "spiffe://mesh.local/ns/default/svc/web" {
		t.Errorf("issued %s", got)
	}
	var creds identity.Credentials
	keyPEM, _ := identity.EncodeKey(cert.PrivateKey)
	chainPEM := pemOf(cert)
	if err := creds.Set(chainPEM, keyPEM, []byte(bundle), time.Now()); err != nil {
		t.Errorf("issued certificate does not chain to the bundle sent with it: %v", err)
	}
	_, _, err = signFor(t, conn, "orders")
	wantCode(t, err, codes.PermissionDenied, "does not allow service orders (it allows web)")
	_, _, err = signFor(t, conn, wire.ControlPlaneService)
	wantCode(t, err, codes.PermissionDenied, "")

	if err := tools.Revoke(claims.ID); err != nil {
		t.Fatal(err)
	}
	_, _, err = signFor(t, tlsConn(t, p, dir, nil, tok), "web")
	wantCode(t, err, codes.Unauthenticated, "revoked")

	// Renewal with the certificate needs no token: revoked (or expired)
	// tokens never stop a running agent.
	renewed, _, err := signFor(t, tlsConn(t, p, dir, &cert, ""), "web")
	if err != nil {
		t.Fatalf("renew with the current certificate: %v", err)
	}
	if renewed.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Error("renewal returned the same certificate")
	}
	_, _, err = signFor(t, tlsConn(t, p, dir, &cert, ""), "orders")
	wantCode(t, err, codes.PermissionDenied, "does not allow service orders")

	short, _, err := tools.MintToken([]string{"web"}, "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	_, _, err = signFor(t, tlsConn(t, p, dir, nil, short), "web")
	wantCode(t, err, codes.Unauthenticated, "expired")

	bound, _, _ := tools.MintToken([]string{"web"}, "vm-1", time.Hour)
	_, _, err = signFor(t, tlsConn(t, p, dir, nil, bound), "web")
	wantCode(t, err, codes.PermissionDenied, "bound to node vm-1")

	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), wire.AuthorizationMetadata, "Bearer "+tok)
	err = plain.Invoke(ctx, wire.CertificateSignMethod, wrapperspb.Bytes([]byte("x")), &structpb.Struct{})
	wantCode(t, err, codes.Unauthenticated, "over TLS only")

	// A certificate from another CA is refused with a status naming it;
	// with a valid token beside it, the token is used.
	other, err := ca.Open(ca.Config{Dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	otherTok, _, _ := other.MintToken([]string{"web"}, "", time.Hour)
	foreign, _, err := signFor(t, tlsConnTo(t, p.xdsAddr, other, nil, otherTok), "web")
	if err == nil {
		t.Fatal("another CA's token signed on this control plane")
	}
	foreign = selfSignedWeb(t)
	_, _, err = signFor(t, tlsConn(t, p, dir, &foreign, ""), "web")
	wantCode(t, err, codes.Unauthenticated, "client certificate")
	fresh, _, _ := tools.MintToken([]string{"web"}, "", time.Hour)
	if _, _, err := signFor(t, tlsConn(t, p, dir, &foreign, fresh), "web"); err != nil {
		t.Errorf("a valid token beside an untrusted certificate: %v", err)
	}

	// The control plane's admin shows the CA; never a key.
	resp, err := httpBody("http://" + p.adminAddr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"trust_domain": "mesh.local"`, `"fingerprint": "sha256:`, `"issued": 3`, `"spiffe_id": "spiffe://mesh.local/ns/default/svc/mesh-control"`} {
		if !strings.Contains(resp, want) {
			t.Errorf("/config_dump lacks %s", want)
		}
	}
	for _, out := range []string{resp, p.logs.String()} {
		if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, tok) {
			t.Error("a private key or a token appears in the control plane's output")
		}
	}
}

func pemOf(c tls.Certificate) []byte {
	var b strings.Builder
	for _, der := range c.Certificate {
		b.WriteString(string(pemEncode(der)))
	}
	return []byte(b.String())
}

// adsOpen opens an ADS stream over conn as node id of service and returns
// the error of its first receive (nil when config arrives).
func adsOpen(conn *grpc.ClientConn, id, service string) (*discoveryv3.DiscoveryResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	md, _ := structpb.NewStruct(map[string]any{wire.NodeService: service})
	// A refused stream's Send may see io.EOF: its status comes with Recv.
	_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &corev3.Node{Id: id, Metadata: md}})
	return s.Recv()
}

// TestXDSBindsNodesToIdentities: under required auth an ADS client without
// a credential is refused with Unauthenticated (over plaintext and over
// TLS), a web token gets config as a web node but not as a node of orders,
// and no one else may take a node id while it is connected.
func TestXDSBindsNodesToIdentities(t *testing.T) {
	register(t, consulRegistration{ID: "bind-1", Name: "bindsvc", Address: "127.0.0.71", Port: 15006}, "passing")
	p, tools, dir := caPlane(t, wire.XDSAuthRequired, 0)
	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = adsOpen(plain, "anon-1", "")
	wantCode(t, err, codes.Unauthenticated, "control.xds.auth: required")
	_, err = adsOpen(tlsConn(t, p, dir, nil, ""), "anon-2", "")
	wantCode(t, err, codes.Unauthenticated, "present a mesh certificate or a join token")

	web, _, _ := tools.MintToken([]string{"web"}, "", time.Hour)
	orders, _, _ := tools.MintToken([]string{"orders"}, "", time.Hour)
	_, err = adsOpen(tlsConn(t, p, dir, nil, web), "orders-vm1-8080", "orders")
	wantCode(t, err, codes.PermissionDenied, `may not get config as node "orders-vm1-8080" of service "orders": it allows web`)

	// A web node holds its stream open; an orders token cannot take its id.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(tlsConn(t, p, dir, nil, web)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{wire.NodeService: "web"})
	if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &corev3.Node{Id: "web-vm1-8080", Metadata: md}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Recv(); err != nil || len(resp.GetResources()) == 0 {
		t.Fatalf("web token as a web node: %v (%d resources)", err, len(resp.GetResources()))
	}
	_, err = adsOpen(tlsConn(t, p, dir, nil, orders), "web-vm1-8080", "")
	wantCode(t, err, codes.PermissionDenied, `node id "web-vm1-8080" is connected by an identity for web`)
}

// TestGRPCProxylessClientOverTLS: gRPC's own xDS client with TLS
// channel_creds (the CA bundle as ca_certificate_file) resolves and calls
// a service through mesh control under optional auth.
func TestGRPCProxylessClientOverTLS(t *testing.T) {
	a := meshtest.LoopbackHost(23)
	port := healthServer(t, a, "tls")
	register(t, consulapi.AgentServiceRegistration{ID: "tlsgreeter-a", Name: "tlsgreeter", Address: a, Port: port,
		Meta: map[string]string{"mesh_zone": "z1", "mesh_region": "r1"}}, "passing")
	p, _, dir := caPlane(t, wire.XDSAuthOptional, 0)
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q}}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-tls-client-1", "locality": {"region": "r1", "zone": "z1"}}
	}`, p.xdsAddr, filepath.Join(dir, "bundle.crt"))
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///tlsgreeter", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	meshtest.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "who-tls"})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.GetStatus())
		}
		return nil
	})
	if !strings.Contains(p.logs.String(), "grpc-tls-client-1") {
		t.Error("the control plane never saw the TLS client's node")
	}
}

func pemEncode(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func httpBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// tlsConnTo dials addr trusting nothing but verifying nothing either (a
// client of another mesh), with token.
func tlsConnTo(t *testing.T, addr string, _ *ca.CA, cert *tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the test's foreign client
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)), grpc.WithPerRPCCredentials(bearer(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// selfSignedWeb is a client certificate for web that chains to no mesh
// root.
func selfSignedWeb(t *testing.T) tls.Certificate {
	t.Helper()
	key, _ := identity.NewKey()
	id, _ := identity.NewID(identity.DefaultTrustDomain, identity.DefaultNamespace, "web")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.URL()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
