package certstore_test

import (
	"crypto/tls"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/certstore"
	"github.com/meshvm/mesh/meshtest"
)

func getCert(t *testing.T, addr, name string, p *meshtest.Pebble) *tls.ConnectionState {
	t.Helper()
	roots := p.Roots(t)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 60 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer c.Close()
	st := c.ConnectionState()
	return &st
}

// TestACMETLSALPN01 gets a certificate from a real ACME server (Pebble)
// for a host served on the TLS-ALPN-01 port: the first handshake for the
// host triggers the order, the certificate chains to Pebble's root, and
// the next handshake is served from the cache.
func TestACMETLSALPN01(t *testing.T) {
	p := meshtest.StartPebble(t)
	s := certstore.New(nil, zerolog.Nop())
	if err := s.EnableACME(certstore.ACME{Directory: p.Directory, Email: "ops@shop.test", Hosts: []string{"shop.test"},
		CacheDir: t.TempDir(), HTTPClient: p.Client}); err != nil {
		t.Fatal(err)
	}
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p.TLSPort), s.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptLoop(ln)
	start := time.Now()
	st := getCert(t, ln.Addr().String(), "shop.test", p)
	if got := st.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "shop.test" {
		t.Fatalf("certificate names %v", got)
	}
	t.Logf("issued by %q in %v", st.PeerCertificates[0].Issuer.CommonName, time.Since(start))
	again := getCert(t, ln.Addr().String(), "shop.test", p)
	if again.PeerCertificates[0].SerialNumber.Cmp(st.PeerCertificates[0].SerialNumber) != 0 {
		t.Fatal("the second handshake got another certificate: not cached")
	}
}

// TestACMEHTTP01: with nothing on the TLS-ALPN-01 port, the order is
// satisfied over HTTP-01 by the HTTP listener's handler, which also
// redirects other requests to HTTPS.
func TestACMEHTTP01(t *testing.T) {
	p := meshtest.StartPebble(t)
	s := certstore.New(nil, zerolog.Nop())
	if err := s.EnableACME(certstore.ACME{Directory: p.Directory, Hosts: []string{"www.shop.test"}, CacheDir: t.TempDir(), HTTPClient: p.Client}); err != nil {
		t.Fatal(err)
	}
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.HTTPHandler(nil), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(httpLn) }()
	defer srv.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", s.ServerConfig()) // not the TLS-ALPN-01 port
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptLoop(ln)
	st := getCert(t, ln.Addr().String(), "www.shop.test", p)
	if got := st.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "www.shop.test" {
		t.Fatalf("certificate names %v", got)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("http://" + httpLn.Addr().String() + "/cart?x=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://127.0.0.1/cart?x=1" {
		t.Fatalf("plain HTTP: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.(*tls.Conn).Handshake()
			buf := make([]byte, 1)
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Read(buf)
		}()
	}
}
