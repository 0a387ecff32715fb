package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/identity"
)

// testCA is a minimal CA for the identity tests (the real one is
// controlplane/ca, which a leaf's tests cannot import).
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	ttl  atomic.Int64
	n    atomic.Int64 // certificates issued
	fail atomic.Bool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{key: key, cert: cert}
	ca.ttl.Store(int64(time.Hour))
	return ca
}

func (ca *testCA) bundle() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

func (ca *testCA) Issue(_ context.Context, csrDER []byte) ([]byte, []byte, error) {
	if ca.fail.Load() {
		return nil, nil, errors.New("control plane unreachable")
	}
	csr, id, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.n.Add(1) + 1), NotBefore: now.Add(-time.Second),
		NotAfter: now.Add(time.Duration(ca.ttl.Load())), URIs: csr.URIs, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	_ = id
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.bundle(), nil
}

func credsFor(t testing.TB, ca *testCA, service string) *identity.Credentials {
	t.Helper()
	r := &identity.Rotator{ID: mustID(t, service), Issuer: ca, Creds: &identity.Credentials{}}
	if err := r.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r.Creds
}

// echoServer accepts TLS connections under cfg, echoes one line and
// records the peer IDs it saw.
func echoServer(t testing.TB, cfg *tls.Config) (addr string, peers chan string) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peers = make(chan string, 1000)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				if id, err := identity.PeerID(tc.ConnectionState()); err == nil {
					peers <- id.String()
				} else {
					peers <- "anonymous"
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String(), peers
}

func roundTrip(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	return err
}

func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	orders, web := credsFor(t, ca, "orders"), credsFor(t, ca, "web")
	addr, peers := echoServer(t, orders.ServerConfig(true, nil))
	if err := roundTrip(addr, web.ClientConfig(mustID(t, "orders"))); err != nil {
		t.Fatalf("mTLS web -> orders: %v", err)
	}
	if got := <-peers; got != "spiffe://mesh.local/ns/default/svc/web" {
		t.Fatalf("orders saw the caller as %s", got)
	}
	if err := roundTrip(addr, web.ClientConfig(mustID(t, "payments"))); err == nil || !strings.Contains(err.Error(), "the server is spiffe://mesh.local/ns/default/svc/orders, want spiffe://mesh.local/ns/default/svc/payments") {
		t.Fatalf("calling orders while expecting payments: %v", err)
	}
	foreign := credsFor(t, newTestCA(t), "web")
	if err := roundTrip(addr, foreign.ClientConfig(mustID(t, "orders"))); err == nil {
		t.Fatal("a client with another CA's certificate got through")
	}
	if err := roundTrip(addr, &tls.Config{InsecureSkipVerify: true}); err == nil { //nolint:gosec // the point of the test
		t.Fatal("a client without a certificate got through in strict mode")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: orders\r\n\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c) // a TLS alert at most, then the close
	if strings.Contains(string(got), "GET /") || strings.Contains(string(got), "HTTP/1.1") {
		t.Fatalf("a plaintext client was served: %q", got)
	}
	c.Close()

	permissive, ppeers := echoServer(t, orders.ServerConfig(false, nil))
	if err := roundTrip(permissive, &tls.Config{InsecureSkipVerify: true}); err != nil { //nolint:gosec // permissive mode
		t.Fatalf("permissive mode refused a client without a certificate: %v", err)
	}
	if got := <-ppeers; got != "anonymous" {
		t.Fatalf("permissive peer %s", got)
	}
	if err := roundTrip(permissive, foreign.ClientConfig(mustID(t, "orders"))); err == nil {
		t.Fatal("permissive mode accepted a certificate it cannot verify")
	}
	denyWeb, _ := echoServer(t, orders.ServerConfig(true, func(id identity.ID) error {
		if id.Service == "web" {
			return errors.New("web may not call orders")
		}
		return nil
	}))
	if err := roundTrip(denyWeb, web.ClientConfig(mustID(t, "orders"))); err == nil {
		t.Fatal("the handshake-level rule let web through")
	}
}

// TestRotationUnderLoad renews a 2 s certificate at least three times
// while clients keep making new mTLS connections: none fails, and every
// connection after a rotation uses a newer certificate.
func TestRotationUnderLoad(t *testing.T) {
	ca := newTestCA(t)
	ca.ttl.Store(int64(2 * time.Second))
	dir := t.TempDir()
	server := &identity.Rotator{ID: mustID(t, "orders"), Dir: filepath.Join(dir, "orders"), Issuer: ca, Creds: &identity.Credentials{}, Log: zerolog.Nop(), MinRetry: 50 * time.Millisecond}
	client := &identity.Rotator{ID: mustID(t, "web"), Dir: filepath.Join(dir, "web"), Issuer: ca, Creds: &identity.Credentials{}, Log: zerolog.Nop(), MinRetry: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range []*identity.Rotator{server, client} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for server.Creds.Leaf() == nil || client.Creds.Leaf() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no certificates issued")
		}
		time.Sleep(10 * time.Millisecond)
	}
	addr, _ := echoServer(t, server.Creds.ServerConfig(true, nil))
	cfg := client.Creds.ClientConfig(mustID(t, "orders"))
	serials := map[string]bool{}
	var failed, ok int
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if err := roundTrip(addr, cfg); err != nil {
			failed++
			t.Logf("round trip: %v", err)
		} else {
			ok++
		}
		serials[server.Creds.Leaf().SerialNumber.String()] = true
		time.Sleep(5 * time.Millisecond)
	}
	if failed > 0 {
		t.Fatalf("%d of %d mTLS connections failed across rotations", failed, failed+ok)
	}
	if len(serials) < 4 {
		t.Fatalf("the server certificate rotated %d times in 5 s with a 2 s lifetime, want at least 3", len(serials)-1)
	}
	fi, err := os.Stat(filepath.Join(dir, "orders", "key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cached key: %v mode %v, want 0600", err, fi.Mode().Perm())
	}
	t.Logf("%d mTLS connections, %d server certificates", ok, len(serials))
}

// TestRestartFromCache: an agent restarted while the control plane is
// down serves with its cached certificate.
func TestRestartFromCache(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	first := &identity.Rotator{ID: mustID(t, "orders"), Dir: dir, Issuer: ca, Creds: &identity.Credentials{}}
	if err := first.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	ca.fail.Store(true) // the control plane is down
	again := &identity.Rotator{ID: mustID(t, "orders"), Dir: dir, Issuer: ca, Creds: &identity.Credentials{}, Log: zerolog.Nop(), MinRetry: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = again.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for again.Creds.Leaf() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the cached certificate was not loaded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if again.Creds.Leaf().SerialNumber.Cmp(first.Creds.Leaf().SerialNumber) != 0 {
		t.Fatal("restart did not serve the cached certificate")
	}
	wrong := &identity.Rotator{ID: mustID(t, "web"), Dir: dir, Issuer: ca, Creds: &identity.Credentials{}}
	if ok, err := wrong.LoadCache(); ok || err == nil || !strings.Contains(err.Error(), "want spiffe://mesh.local/ns/default/svc/web") {
		t.Fatalf("another identity's cache: %v %v", ok, err)
	}
}

func TestRenewAt(t *testing.T) {
	now := time.Now()
	leaf := &x509.Certificate{NotBefore: now, NotAfter: now.Add(24 * time.Hour)}
	for i := 0; i < 100; i++ {
		at := identity.RenewAt(leaf).Sub(now)
		if at < 576*time.Minute || at > 864*time.Minute {
			t.Fatalf("renewal at %v of a 24 h certificate, want at 40-60%% of its life", at)
		}
	}
}
