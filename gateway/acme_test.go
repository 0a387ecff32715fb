package gateway_test

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// The gateway gets its certificates from a real ACME server (Pebble):
// over TLS-ALPN-01 on its HTTPS listener, and over HTTP-01 on its HTTP
// listener when the HTTPS one is not where the ACME server validates.
func TestACME(t *testing.T) {
	for _, c := range []struct {
		name  string
		https func(p *meshtest.Pebble) string
		http  func(p *meshtest.Pebble) string
	}{
		{"tls-alpn-01", func(p *meshtest.Pebble) string { return "127.0.0.1:" + strconv.Itoa(p.TLSPort) },
			func(*meshtest.Pebble) string { return "127.0.0.1:0" }},
		{"http-01", func(*meshtest.Pebble) string { return "127.0.0.1:0" },
			func(p *meshtest.Pebble) string { return "127.0.0.1:" + strconv.Itoa(p.HTTPPort) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := meshtest.StartPebble(t)
			cp := startControlPlane(t)
			g := startGateway(t, cp, newCA(t), func(cfg *config.Config) {
				cfg.Gateway.HTTPSAddr, cfg.Gateway.HTTPAddr = c.https(p), c.http(p)
				cfg.Gateway.TLS.Certificates = nil
				cfg.Gateway.TLS.ACME = config.GatewayACME{Enabled: true, Directory: p.Directory, Email: "ops@shop.test",
					Hosts: []string{"acme.shop.test"}, CAFile: p.CAFile}
			})
			roots := p.Roots(t)
			var st tls.ConnectionState
			meshtest.Eventually(t, 60*time.Second, func() error {
				conn, err := tls.Dial("tcp", g.https, &tls.Config{RootCAs: roots, ServerName: "acme.shop.test"})
				if err != nil {
					return err
				}
				st = conn.ConnectionState()
				conn.Close()
				return nil
			})
			if got := st.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "acme.shop.test" {
				t.Fatalf("certificate for %v, want acme.shop.test", got)
			}
			// Served through the gateway: no routes yet, so 404 no-route,
			// over a verified TLS connection.
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "acme.shop.test"}}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("GET", "https://"+g.https+"/", nil)
			req.Host = "acme.shop.test"
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 404 {
				t.Fatal(fmt.Sprint("got ", resp.StatusCode, ", want 404 no-route"))
			}
		})
	}
}
