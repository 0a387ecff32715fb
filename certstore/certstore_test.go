package certstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/certstore"
)

// writePair writes a self-signed certificate for names (CommonName cn)
// and its key into dir under base.
func writePair(t *testing.T, dir, base, cn string, names ...string) certstore.Pair {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	p := certstore.Pair{CertFile: filepath.Join(dir, base+".crt"), KeyFile: filepath.Join(dir, base+".key")}
	// Write through temporary files and rename, as an ACME client or
	// Ansible does, so a reload never sees half a pair.
	for path, data := range map[string][]byte{
		p.KeyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		p.CertFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	} {
		if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// handshake connects with SNI and returns the served leaf's CommonName
// and the connection (open).
func handshake(t *testing.T, addr, sni string) (string, *tls.Conn) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec // self-signed test certificates
	if err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, c
}

func TestSNIAndReload(t *testing.T) {
	dir := t.TempDir()
	shop := writePair(t, dir, "shop", "shop v1", "shop.example.com", "www.shop.example.com")
	api := writePair(t, dir, "api", "api wildcard", "*.api.example.com")
	s := certstore.New([]certstore.Pair{shop, api}, zerolog.Nop())
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, s.ServerConfig())
	for _, c := range []struct{ sni, want string }{
		{"shop.example.com", "shop v1"},
		{"WWW.Shop.Example.com.", "shop v1"},
		{"orders.api.example.com", "api wildcard"},
		{"a.b.api.example.com", "shop v1"}, // a wildcard covers one label only: the default
		{"unknown.example.org", "shop v1"},
	} {
		got, conn := handshake(t, addr, c.sni)
		conn.Close()
		if got != c.want {
			t.Errorf("SNI %s: served %q, want %q", c.sni, got, c.want)
		}
	}
	_, kept := handshake(t, addr, "shop.example.com")
	defer kept.Close()
	if p := kept.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	writePair(t, dir, "shop", "shop v2", "shop.example.com", "www.shop.example.com")
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, conn := handshake(t, addr, "shop.example.com")
		conn.Close()
		if got == "shop v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replaced certificate was not served within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The connection opened before the reload still works.
	_ = kept.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := kept.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(kept, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("old connection after the reload: %v %q", err, buf)
	}

	// A broken replacement keeps the loaded certificates.
	if err := os.WriteFile(shop.CertFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got, conn := handshake(t, addr, "shop.example.com"); got != "shop v2" {
		t.Fatalf("after a broken file: served %q, want the last good shop v2", got)
	} else {
		conn.Close()
	}
	if err := s.Load(); err == nil || !strings.Contains(err.Error(), shop.CertFile) {
		t.Fatalf("Load of a broken file: %v, want an error naming it", err)
	}
}

func TestTLSVersions(t *testing.T) {
	dir := t.TempDir()
	s := certstore.New([]certstore.Pair{writePair(t, dir, "shop", "shop", "shop.example.com")}, zerolog.Nop())
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, s.ServerConfig())
	_, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "shop.example.com", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}) //nolint:gosec // testing refusal
	if err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "shop.example.com", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, //nolint:gosec // test
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
	if err != nil {
		t.Fatalf("TLS 1.2 with an AEAD suite: %v", err)
	}
	c.Close()
	if err := certstore.New(nil, zerolog.Nop()).Load(); err == nil {
		t.Fatal("an empty store loaded")
	}
}
