package gateway_test

import (
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshvm/mesh/meshtest"
)

// h2specFailures runs h2spec over TLS against addr and returns the failed
// cases by id ("http2/6.5.3/1").
func h2specFailures(t *testing.T, addr string) (failed []string, total int) {
	t.Helper()
	bin := filepath.Join(meshtest.RepoRoot(), "bin", "h2spec")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("h2spec missing (run `make h2spec`): %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	out, err := exec.Command(bin, "-h", host, "-p", port, "-t", "-k", "-j", report).CombinedOutput()
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

// The gateway's HTTPS listener, routing into the mesh, fails no more
// h2spec cases than Go's own net/http TLS server in the same run (run
// again once if it does: the machine is shared).
func TestH2specAgainstTheGateway(t *testing.T) {
	inbound := startAgent(t, "127.0.0.87", "h2spec-app", startApp(t, "127.0.0.87", "h2spec-app"))
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, nil)
	cp.set(t, g.node, gwConfig{services: map[string][]string{"h2spec-app": {inbound}}, routes: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{prefixRoute("all", "/", toCluster("h2spec-app"))}}}}})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 200 {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})

	// The baseline: Go's own HTTPS server with a certificate of the same CA.
	crt, key := ca.issue(t, t.TempDir(), "base", 50, "localhost")
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.88:0")
	if err != nil {
		t.Fatal(err)
	}
	base := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2", "http/1.1"}}}
	go base.ServeTLS(ln, "", "")
	t.Cleanup(func() { base.Close() })

	for attempt := 1; ; attempt++ {
		want, n := h2specFailures(t, ln.Addr().String())
		got, n2 := h2specFailures(t, g.https)
		t.Logf("h2spec over TLS: Go's net/http server failed %d of %d %v; the gateway failed %d of %d %v", len(want), n, want, len(got), n2, got)
		if len(got) <= len(want) {
			return
		}
		if attempt == 2 {
			t.Fatalf("the gateway fails %d h2spec cases, Go's own server %d", len(got), len(want))
		}
	}
}
