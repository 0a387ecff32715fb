package mtls_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/identity/identitytest"
	"github.com/meshvm/mesh/wire"
)

// serve runs an HTTP server answering with the caller identity behind
// an mTLS listener of the given mode.
func serve(t *testing.T, creds *identity.Credentials, mode string, m *mtls.Metrics) string {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in := &mtls.Inbound{Creds: creds, Mode: func() string { return mode }, Metrics: m, Log: zerolog.Nop()}
	ln := in.Listener(raw)
	srv := &http.Server{
		ConnContext: mtls.ConnContext,
		Handler: mtls.PeerHeader(wire.PeerIdentityHeader, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, r.Header.Get(wire.PeerIdentityHeader))
		})),
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return raw.Addr().String()
}

func dialer(creds *identity.Credentials, want identity.ID, m *mtls.Metrics) *mtls.Dialer {
	return &mtls.Dialer{Creds: creds, Metrics: m,
		Peer:     func(context.Context, string) (identity.ID, bool) { return want, true },
		Protocol: func(context.Context) string { return mtls.ALPNHTTP1 }}
}

func get(t *testing.T, dial mtls.DialFunc, addr string) (string, error) {
	t.Helper()
	c, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n"+wire.PeerIdentityHeader+": spiffe://mesh.local/ns/default/svc/forged\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestStrictAndPermissive(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	m, err := mtls.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	server := ca.Credentials(t, "orders")
	client := ca.Credentials(t, "web")
	var d net.Dialer
	for _, mode := range []string{wire.MTLSStrict, wire.MTLSPermissive} {
		addr := serve(t, server, mode, m)
		got, err := get(t, dialer(client, ca.ID("orders"), m).Wrap(d.DialContext), addr)
		if err != nil || got != "spiffe://mesh.local/ns/default/svc/web" {
			t.Fatalf("%s: mTLS call: %q, %v", mode, got, err)
		}
		got, err = get(t, d.DialContext, addr)
		switch {
		case mode == wire.MTLSStrict && err == nil:
			t.Fatalf("strict: plaintext served: %q", got)
		case mode == wire.MTLSPermissive && (err != nil || got != ""):
			t.Fatalf("permissive: plaintext call %q, %v; want served with no identity", got, err)
		}
		// The client refuses a server that is not who it must be.
		if _, err := get(t, dialer(client, ca.ID("payments"), m).Wrap(d.DialContext), addr); err == nil || !strings.Contains(err.Error(), "want spiffe://mesh.local/ns/default/svc/payments") {
			t.Fatalf("%s: a server with the wrong identity: %v", mode, err)
		}
	}
	if n := value(m.ConnsCounter(mtls.TransportPlaintext)); n != 1 {
		t.Errorf("plaintext connections %v, want 1 (permissive only)", n)
	}
	if n := value(m.ErrorsCounter(mtls.SideClient, mtls.ReasonWrongIdentity)); n != 2 {
		t.Errorf("client wrong-identity errors %v, want 2", n)
	}
}

// A rotated certificate is used by new connections; a connection up
// before the rotation keeps working.
func TestRotationNewConnections(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	server := ca.Credentials(t, "orders")
	client := ca.Credentials(t, "web")
	addr := serve(t, server, wire.MTLSStrict, nil)
	var d net.Dialer
	dial := dialer(client, ca.ID("orders"), nil).Wrap(d.DialContext)
	old, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	before := old.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber
	c, k := ca.Issue(t, "orders", time.Hour)
	if err := server.Set(c, k, ca.Bundle(), time.Now()); err != nil {
		t.Fatal(err)
	}
	fresh, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	after := fresh.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber
	if before.Cmp(after) == 0 {
		t.Fatal("a new connection got the old certificate")
	}
	_, _ = io.WriteString(old, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(old), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the connection up before the rotation: %v", err)
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}
