package ca_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
)

// caIssuer issues through the real CA with a join token first and the
// current certificate afterwards, as an agent renews.
type caIssuer struct {
	ca    *ca.CA
	token string
	creds *identity.Credentials
}

func (i *caIssuer) Issue(_ context.Context, csr []byte) ([]byte, []byte, error) {
	cred := ca.Credential{Token: i.token}
	if leaf := i.creds.Leaf(); leaf != nil {
		cred = ca.Credential{Peer: leaf}
	}
	iss, err := i.ca.Sign(csr, cred)
	if err != nil {
		return nil, nil, err
	}
	return iss.ChainPEM, i.ca.BundlePEM(), nil
}

// TestMutualTLSWithIssuedCertificates: two workloads get their
// certificates from the real CA against join tokens, renew with their
// certificates, and talk mTLS with each other's SPIFFE IDs verified.
func TestMutualTLSWithIssuedCertificates(t *testing.T) {
	c := open(t, ca.Config{Dir: t.TempDir()}, &clock{t: time.Now()})
	rot := map[string]*identity.Rotator{}
	for _, svc := range []string{"web", "orders"} {
		tok, _, err := c.MintToken([]string{svc}, "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := c.ID(svc)
		creds := &identity.Credentials{}
		r := &identity.Rotator{ID: id, Issuer: &caIssuer{ca: c, token: tok, creds: creds}, Creds: creds}
		if err := r.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := r.Rotate(context.Background()); err != nil { // renewal with the certificate
			t.Fatalf("renewal of %s: %v", svc, err)
		}
		rot[svc] = r
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", rot["orders"].Creds.ServerConfig(true, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- "handshake: " + err.Error()
			return
		}
		id, _ := identity.PeerID(tc.ConnectionState())
		got <- id.String()
		_, _ = io.Copy(conn, conn)
	}()
	ordersID, _ := c.ID("orders")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), rot["web"].Creds.ClientConfig(ordersID))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if st := conn.ConnectionState(); st.Version != tls.VersionTLS13 {
		t.Fatalf("TLS version %x, want 1.3", st.Version)
	}
	if peer, _ := identity.PeerID(conn.ConnectionState()); peer != ordersID {
		t.Fatalf("web sees %v", peer)
	}
	if s := <-got; s != "spiffe://mesh.local/ns/default/svc/web" {
		t.Fatalf("orders sees %s", s)
	}
}
