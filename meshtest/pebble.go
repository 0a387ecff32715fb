package meshtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Pebble is a running ACME server (letsencrypt/pebble, built by `make
// pebble`) with its DNS (pebble-challtestsrv answering 127.0.0.1 for every
// name), all on 127.0.0.1. Its validation authority connects to
// HTTPPort (HTTP-01) and TLSPort (TLS-ALPN-01) on 127.0.0.1: the server
// under test listens there.
type Pebble struct {
	// Directory is the ACME directory URL.
	Directory string
	// Client trusts Pebble's HTTPS listener; CAFile is the PEM of the CA
	// that signed that listener's certificate (for a process's config).
	Client *http.Client
	CAFile string
	// HTTPPort and TLSPort are where challenges are validated.
	HTTPPort, TLSPort int
	mgmt              string
	logPath           string
}

// Log returns what Pebble and its DNS printed (for a failing test).
func (p *Pebble) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// PebbleBinary is the binary `make pebble` builds.
func PebbleBinary(name string) string { return filepath.Join(RepoRoot(), "bin", name) }

// StartPebble starts Pebble and its DNS for t; a missing binary fails t.
func StartPebble(t testing.TB) *Pebble {
	t.Helper()
	for _, b := range []string{"pebble", "pebble-challtestsrv"} {
		if _, err := os.Stat(PebbleBinary(b)); err != nil {
			t.Fatalf("%s missing (run `make pebble`): %v", b, err)
		}
	}
	dir := t.TempDir()
	caPool, certFile, keyFile := pebbleListenerCert(t, dir)
	ports := FreePorts("127.0.0.1", 6) // distinct, TCP and UDP free (the DNS is UDP)
	dns := ports[0]
	p := &Pebble{HTTPPort: ports[1], TLSPort: ports[2]}
	listen, mgmt, dnsMgmt := ports[3], ports[4], ports[5]
	p.Directory = fmt.Sprintf("https://127.0.0.1:%d/dir", listen)
	p.mgmt = fmt.Sprintf("https://127.0.0.1:%d", mgmt)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           "127.0.0.1:" + strconv.Itoa(listen),
		"managementListenAddress": "127.0.0.1:" + strconv.Itoa(mgmt),
		"certificate":             certFile, "privateKey": keyFile,
		"httpPort": p.HTTPPort, "tlsPort": p.TLSPort,
		"ocspResponderURL": "", "externalAccountBindingRequired": false,
		"retryAfter": map[string]int{"authz": 1, "order": 1},
		"profiles":   map[string]any{"default": map[string]any{"description": "test", "validityPeriod": 7776000}},
	}}
	data, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p.logPath = filepath.Join(dir, "pebble.log")
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan string, 2) // the name of a process that exited
	start := func(env []string, name string, args ...string) *exec.Cmd {
		cmd := exec.Command(PebbleBinary(name), args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		done := make(chan struct{})
		go func() {
			err := cmd.Wait()
			exited <- fmt.Sprintf("%s (%v)", name, err)
			close(done)
		}()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		return cmd
	}
	dnsAddr := "127.0.0.1:" + strconv.Itoa(dns)
	start(nil, "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dnsserver", dnsAddr,
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "", "-management", "127.0.0.1:"+strconv.Itoa(dnsMgmt))
	// No random sleeps in validation, no nonce rejections: tests about
	// challenges, not about client retries.
	start([]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, "pebble", "-config", cfgFile, "-dnsserver", dnsAddr)
	p.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	p.CAFile = filepath.Join(dir, "pebble-ca.pem")
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := p.Client.Get(p.Directory)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not ready at %s: %v; last lines of its log:\n%s", p.Directory, err, tail(p.Log(), 20))
		}
		select {
		case which := <-exited: // at once, not after the deadline
			t.Fatalf("%s exited at start; last lines of the log:\n%s", which, tail(p.Log(), 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return p
}

// Roots returns the pool of Pebble's issuing root (it makes a new one at
// every start).
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.Client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble root: %q", data)
	}
	return pool
}

// pebbleListenerCert makes a test CA and a certificate for 127.0.0.1
// for Pebble's own HTTPS listeners.
func pebbleListenerCert(t testing.TB, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebble test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pebble"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "pebble.crt"), filepath.Join(dir, "pebble.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pebble-ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, certFile, keyFile
}
