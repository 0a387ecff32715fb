package certstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"

	"github.com/meshvm/mesh/certstore"
)

// ocspCA issues leaves naming its OCSP responder, a real HTTP server on
// loopback that signs answers with the CA's key (as a CA's responder
// does): good, or down.
type ocspCA struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	url   string
	down  atomic.Bool
	asked atomic.Int64
}

func newOCSPCA(t *testing.T) *ocspCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ocsp test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := &ocspCA{key: key}
	ca.cert, _ = x509.ParseCertificate(der)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(ca.respond)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	ca.url = "http://" + ln.Addr().String() + "/ocsp"
	return ca
}

func (ca *ocspCA) respond(w http.ResponseWriter, r *http.Request) {
	ca.asked.Add(1)
	if ca.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	body, _ := io.ReadAll(r.Body)
	req, err := ocsp.ParseRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := time.Now()
	der, err := ocsp.CreateResponse(ca.cert, ca.cert, ocsp.Response{Status: ocsp.Good, SerialNumber: req.SerialNumber,
		ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}, ca.key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(der)
}

// issue writes a leaf for name (and the CA after it in the chain file).
func (ca *ocspCA) issue(t *testing.T, dir, base, name string, serial int64, withOCSP bool) certstore.Pair {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if withOCSP {
		tmpl.OCSPServer = []string{ca.url}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	p := certstore.Pair{CertFile: filepath.Join(dir, base+".crt"), KeyFile: filepath.Join(dir, base+".key")}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	for path, data := range map[string][]byte{p.KeyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), p.CertFile: chain} {
		if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestOCSPStapling: a certificate naming an OCSP responder is served with
// the responder's good answer stapled; one naming none is served without;
// a replaced certificate is served at once, without a staple while the
// responder is down, and with its own once the responder is back.
func TestOCSPStapling(t *testing.T) {
	ca := newOCSPCA(t)
	dir := t.TempDir()
	shop := ca.issue(t, dir, "shop", "shop.example.com", 100, true)
	plain := ca.issue(t, dir, "plain", "plain.example.com", 200, false)
	s := certstore.New([]certstore.Pair{shop, plain}, zerolog.Nop())
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, 50*time.Millisecond) }()
	defer func() {
		cancel()
		<-done
	}()
	addr := serveTLS(t, s.ServerConfig())
	stapled := func(sni string) (serial int64, status string) {
		t.Helper()
		_, c := handshake(t, addr, sni)
		defer c.Close()
		cs := c.ConnectionState()
		leaf := cs.PeerCertificates[0]
		if len(cs.OCSPResponse) == 0 {
			return leaf.SerialNumber.Int64(), "none"
		}
		r, err := ocsp.ParseResponseForCert(cs.OCSPResponse, leaf, ca.cert)
		if err != nil {
			t.Fatalf("stapled response for %s: %v", sni, err)
		}
		if r.Status != ocsp.Good {
			return leaf.SerialNumber.Int64(), fmt.Sprint("status ", r.Status)
		}
		return leaf.SerialNumber.Int64(), "good"
	}
	eventually := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	eventually("shop.example.com stapled", func() bool { _, st := stapled("shop.example.com"); return st == "good" })
	if serial, st := stapled("plain.example.com"); serial != 200 || st != "none" {
		t.Errorf("plain.example.com (no responder): serial %d, staple %s; want 200 without one", serial, st)
	}
	asked := ca.asked.Load()
	time.Sleep(300 * time.Millisecond) // several checks: the staple is fresh for an hour
	if n := ca.asked.Load() - asked; n != 0 {
		t.Errorf("the responder was asked %d more times for a staple fresh for an hour", n)
	}

	ca.down.Store(true)
	ca.issue(t, dir, "shop", "shop.example.com", 101, true)
	eventually("the new certificate served", func() bool { serial, _ := stapled("shop.example.com"); return serial == 101 })
	if _, st := stapled("shop.example.com"); st != "none" {
		t.Errorf("the new certificate with its responder down: staple %s, want none (the old one's is not its)", st)
	}
	ca.down.Store(false)
	// Retried after a minute: the test waits for the retry rather than
	// for the clock, so it only checks that the answer arrives in time
	// when the responder was reachable at the reload.
	ca.issue(t, dir, "shop", "shop.example.com", 102, true)
	eventually("the newest certificate stapled", func() bool { serial, st := stapled("shop.example.com"); return serial == 102 && st == "good" })
}
