package gateway_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// SNI picks the certificate for the name; replacing the files changes
// what new handshakes get, without a restart, and a connection that was
// up keeps working.
func TestCertificatesBySNIAndReload(t *testing.T) {
	cp := startControlPlane(t)
	ca := newCA(t)
	dir := t.TempDir()
	apiCrt, apiKey := ca.issue(t, dir, "api", 100, "api.example.test")
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.TLS.Certificates = append(c.Gateway.TLS.Certificates, config.CertificateFiles{CertFile: apiCrt, KeyFile: apiKey})
	})
	serial := func(name string) (int64, *tls.Conn) {
		t.Helper()
		c, err := tls.Dial("tcp", g.https, &tls.Config{RootCAs: ca.pool, ServerName: name, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), c
	}
	for name, want := range map[string]int64{"api.example.test": 100, "shop.test": 10, "www.shop.test": 10} {
		if got, c := serial(name); got != want {
			t.Errorf("SNI %s got certificate %d, want %d", name, got, want)
		} else {
			c.Close()
		}
	}
	_, old := serial("api.example.test")
	defer old.Close()
	ca.issue(t, dir, "api", 101, "api.example.test")
	meshtest.Eventually(t, 10*time.Second, func() error {
		got, c := serial("api.example.test")
		c.Close()
		if got != 101 {
			return fmt.Errorf("still certificate %d after the files changed", got)
		}
		return nil
	})
	if _, err := old.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		t.Fatalf("the connection that was up before the reload broke: %v", err)
	}
}

// Slowloris clients (many connections each sending a header byte every
// few seconds) are cut off by the header timeout and do not stop a
// normal client from being served.
func TestSlowClientsAreCutOff(t *testing.T) {
	v1 := startAgent(t, "127.0.0.86", "slow-target", startApp(t, "127.0.0.86", "slow-1"))
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.Limits.ReadHeaderTimeout = 2 * time.Second
		c.Gateway.Limits.MaxConnections = 100
	})
	cp.set(t, g.node, gwConfig{services: map[string][]string{"slow-target": {v1}}, routes: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{prefixRoute("all", "/", toCluster("slow-target"))}}}}})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 200 {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})

	const slow = 90 // most of the connection limit
	conns := make([]*tls.Conn, 0, slow)
	for i := 0; i < slow; i++ {
		c, err := tls.Dial("tcp", g.https, &tls.Config{RootCAs: ca.pool, ServerName: "shop.test", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		conns = append(conns, c)
		_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: shop.test\r\n"))
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	cut := make(chan int, slow)
	for i, c := range conns {
		go func() {
			for {
				if _, err := c.Write([]byte("X-A: b\r\n")); err != nil {
					cut <- i
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 1)
				if _, err := c.Read(buf); err != nil && !isTimeout(err) {
					cut <- i
					return
				}
			}
		}()
	}
	// A normal client is served while they drip.
	for i := 0; i < 5; i++ {
		if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 200 {
			t.Fatalf("a normal client got %d while slow clients held connections", resp.StatusCode)
		}
	}
	deadline := time.After(20 * time.Second)
	for n := 0; n < slow; n++ {
		select {
		case <-cut:
		case <-deadline:
			t.Fatalf("only %d of %d slow clients were cut off within 20s", n, slow)
		}
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("slow clients were cut off after %s, want about the 2s header timeout", d)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	if e, ok := err.(net.Error); ok {
		ne = e
	}
	return ne != nil && ne.Timeout() && !strings.Contains(err.Error(), "closed")
}

// Client certificates are verified for the hosts that ask for them
// (against that host's CA bundle) and not asked of the others; a request
// cannot reach such a host over a handshake for another name. Oversized
// headers get 431, oversized bodies 413.
func TestClientCertsAndSizeLimits(t *testing.T) {
	inbound := startAgent(t, "127.0.0.89", "mtls-app", startApp(t, "127.0.0.89", "mtls-app"))
	cp := startControlPlane(t)
	ca := newCA(t)
	clientCA := newCA(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "clients.pem")
	writeFile(t, caFile, clientCA.pem)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.TLS.ClientCA = []config.ClientCA{{Host: "secure.shop.test", CAFile: caFile}}
		c.Gateway.Limits.MaxHeaderBytes = 4096
		c.Gateway.Limits.MaxBodyBytes = 1000
	})
	cp.set(t, g.node, gwConfig{services: map[string][]string{"mtls-app": {inbound}}, routes: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{prefixRoute("all", "/", toCluster("mtls-app"))}}}}})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 200 {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})
	ccrt, ckey := clientCA.issue(t, dir, "client", 7, "client-1")
	pair, err := tls.LoadX509KeyPair(ccrt, ckey)
	if err != nil {
		t.Fatal(err)
	}
	do := func(sni, host string, certs []tls.Certificate, body string) (*http.Response, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: sni, Certificates: certs}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest("POST", "https://"+g.https+"/", rd)
		req.Host = host
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	if _, err := do("secure.shop.test", "secure.shop.test", nil, ""); err == nil {
		t.Error("secure.shop.test served a client without a certificate")
	}
	if resp, err := do("secure.shop.test", "secure.shop.test", []tls.Certificate{pair}, ""); err != nil || resp.StatusCode != 200 {
		t.Errorf("secure.shop.test with a client certificate: %v %v", resp, err)
	}
	if resp, err := do("shop.test", "shop.test", nil, ""); err != nil || resp.StatusCode != 200 {
		t.Errorf("shop.test (no client CA) without a certificate: %v %v", resp, err)
	}
	if resp, err := do("shop.test", "secure.shop.test", nil, ""); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("secure.shop.test over a handshake for shop.test: %v %v, want 421", resp, err)
	}
	if resp, err := do("shop.test", "shop.test", nil, strings.Repeat("x", 2000)); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a 2000-byte body over max_body_bytes 1000: %v %v, want 413", resp, err)
	}
	c, err := tls.Dial("tcp", g.https, &tls.Config{RootCAs: ca.pool, ServerName: "shop.test", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("y", 20000))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 20 KB header over max_header_bytes 4096 (net/http allows 4 KB of slack): %v %v, want 431", resp, err)
	}
}
