package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, cfg ca.Config, clk *clock) *ca.CA {
	t.Helper()
	c, err := ca.Open(cfg, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// csrFor makes a workload's key and CSR for service.
func csrFor(t *testing.T, service string) []byte {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewID("mesh.local", "default", service)
	if err != nil {
		t.Fatal(err)
	}
	der, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pool(t *testing.T, bundle []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(bundle) {
		t.Fatal("empty bundle")
	}
	return p
}

func verify(c *x509.Certificate, roots *x509.CertPool, inter []*x509.Certificate, at time.Time) error {
	ip := x509.NewCertPool()
	for _, i := range inter {
		ip.AddCert(i)
	}
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: ip, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}})
	return err
}

func TestFirstStartAndReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	clk := &clock{t: time.Now()}
	c := open(t, ca.Config{Dir: dir}, clk)
	for name, mode := range map[string]os.FileMode{"ca.key": 0o600, "token.key": 0o600, "ca.crt": 0o644, "bundle.crt": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v mode %v, want %v", name, err, fi.Mode().Perm(), mode)
		}
	}
	tok, _, err := c.MintToken([]string{"web"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again := open(t, ca.Config{Dir: dir}, clk) // a restart, or a second control plane on the same files
	if string(again.BundlePEM()) != string(c.BundlePEM()) {
		t.Fatal("reopening generated another root")
	}
	if _, err := again.Sign(csrFor(t, "web"), ca.Credential{Token: tok}); err != nil {
		t.Fatalf("a token minted before the restart: %v", err)
	}
}

func TestTokenAllowsOnlyItsServices(t *testing.T) {
	clk := &clock{t: time.Now()}
	c := open(t, ca.Config{Dir: t.TempDir(), CertTTL: time.Hour}, clk)
	tok, claims, err := c.MintToken([]string{"web"}, "vm-1", 720*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.Sign(csrFor(t, "web"), ca.Credential{Token: tok, Node: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if iss.ID.String() != "spiffe://mesh.local/ns/default/svc/web" || iss.TokenID != claims.ID {
		t.Fatalf("issued %v against %q", iss.ID, iss.TokenID)
	}
	if got, _ := identity.FromCertificate(iss.Cert); got != iss.ID {
		t.Fatalf("certificate names %v", got)
	}
	if d := iss.Cert.NotAfter.Sub(clk.t); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("certificate lifetime %v, want the 1h cert_ttl", d)
	}
	if err := verify(iss.Cert, pool(t, c.BundlePEM()), nil, clk.t); err != nil {
		t.Fatalf("issued certificate does not verify against the bundle: %v", err)
	}
	if strings.Contains(string(iss.ChainPEM), "PRIVATE") {
		t.Fatal("chain holds a private key")
	}

	expiredTok, _, _ := c.MintToken([]string{"web"}, "", time.Minute)
	for _, tc := range []struct {
		name string
		csr  []byte
		cred ca.Credential
		at   time.Time
		want string
	}{
		{"another service", csrFor(t, "orders"), ca.Credential{Token: tok, Node: "vm-1"}, clk.t, "does not allow service orders"},
		{"another node", csrFor(t, "web"), ca.Credential{Token: tok, Node: "vm-2"}, clk.t, "bound to node vm-1"},
		{"expired token", csrFor(t, "web"), ca.Credential{Token: expiredTok}, clk.t.Add(time.Hour), "expired"},
		{"no credential", csrFor(t, "web"), ca.Credential{}, clk.t, "no credential"},
		{"garbage token", csrFor(t, "web"), ca.Credential{Token: "mesh1.e30.AAAA"}, clk.t, "join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk.t, tc.at = tc.at, clk.t
			defer func() { clk.t = tc.at }()
			if _, err := c.Sign(tc.csr, tc.cred); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Sign = %v, want an error containing %q", err, tc.want)
			}
		})
	}

	if err := c.Revoke(claims.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sign(csrFor(t, "web"), ca.Credential{Token: tok, Node: "vm-1"}); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token: %v", err)
	}
}

// TestRenewalOutlivesTheToken: a workload renews with its current
// certificate after its join token expired or was revoked.
func TestRenewalOutlivesTheToken(t *testing.T) {
	clk := &clock{t: time.Now()}
	c := open(t, ca.Config{Dir: t.TempDir(), CertTTL: 24 * time.Hour}, clk)
	tok, claims, _ := c.MintToken([]string{"web"}, "", time.Hour)
	iss, err := c.Sign(csrFor(t, "web"), ca.Credential{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Revoke(claims.ID)
	clk.t = clk.t.Add(12 * time.Hour) // token expired and revoked, certificate at half-life
	renewed, err := c.Sign(csrFor(t, "web"), ca.Credential{Peer: iss.Cert})
	if err != nil {
		t.Fatalf("renewal with the current certificate: %v", err)
	}
	if !renewed.Cert.NotAfter.After(iss.Cert.NotAfter) {
		t.Fatal("renewal did not extend the certificate")
	}
	if _, err := c.Sign(csrFor(t, "orders"), ca.Credential{Peer: iss.Cert}); err == nil || !strings.Contains(err.Error(), "is for spiffe://mesh.local/ns/default/svc/web") {
		t.Fatalf("renewing as another service: %v", err)
	}
	clk.t = clk.t.Add(13 * time.Hour) // past the certificate's expiry
	if _, err := c.Sign(csrFor(t, "web"), ca.Credential{Peer: iss.Cert}); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("renewal with an expired certificate: %v", err)
	}
	other := open(t, ca.Config{Dir: t.TempDir()}, clk)
	otok, _, _ := other.MintToken([]string{"web"}, "", time.Hour)
	foreign, _ := other.Sign(csrFor(t, "web"), ca.Credential{Token: otok})
	if _, err := c.Sign(csrFor(t, "web"), ca.Credential{Peer: foreign.Cert}); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("renewal with another CA's certificate: %v", err)
	}
}

// TestRootRotation: during a rotation the bundle trusts both roots, so
// certificates from the old root and the new one verify each other's
// side; renewal with an old-root certificate lands on the new root; once
// the old root is retired its certificates no longer verify.
func TestRootRotation(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Now()}
	c := open(t, ca.Config{Dir: dir}, clk)
	tok, _, _ := c.MintToken([]string{"web", "orders"}, "", time.Hour)
	old, err := c.Sign(csrFor(t, "web"), ca.Credential{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Roots()); n != 2 {
		t.Fatalf("bundle during rotation holds %d roots, want 2", n)
	}
	fresh, err := c.Sign(csrFor(t, "orders"), ca.Credential{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Cert.Issuer.String() == old.Cert.Issuer.String() {
		t.Fatal("after rotation, certificates are still signed by the old root")
	}
	bundle := pool(t, c.BundlePEM())
	for name, cert := range map[string]*x509.Certificate{"old-root certificate": old.Cert, "new-root certificate": fresh.Cert} {
		if err := verify(cert, bundle, nil, clk.t); err != nil {
			t.Fatalf("%s against the rotation bundle: %v", name, err)
		}
	}
	renewed, err := c.Sign(csrFor(t, "web"), ca.Credential{Peer: old.Cert})
	if err != nil {
		t.Fatalf("renewal with an old-root certificate: %v", err)
	}
	if renewed.Cert.Issuer.String() != fresh.Cert.Issuer.String() {
		t.Fatal("renewal did not move to the new root")
	}
	reopened := open(t, ca.Config{Dir: dir}, clk) // another control plane reading the files
	if len(reopened.Roots()) != 2 {
		t.Fatal("the rotation is not in the shared files")
	}
	if err := c.RetireRoots(); err != nil {
		t.Fatal(err)
	}
	if err := verify(old.Cert, pool(t, c.BundlePEM()), nil, clk.t); err == nil {
		t.Fatal("an old-root certificate still verifies after the old root was retired")
	}
	if err := verify(renewed.Cert, pool(t, c.BundlePEM()), nil, clk.t); err != nil {
		t.Fatalf("a renewed certificate after retirement: %v", err)
	}
}

// TestOperatorIntermediate: an operator's intermediate (with its chain in
// cert_file) signs; the chain sent to workloads carries the intermediate
// and the bundle holds the operator's root.
func TestOperatorIntermediate(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corp root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * 365 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mesh intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * 30 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	interDER, _ := x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	certFile, keyFile := filepath.Join(dir, "inter.crt"), filepath.Join(dir, "inter.key")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})...)
	if err := os.WriteFile(certFile, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKeyFile(keyFile, interKey); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: now}
	c := open(t, ca.Config{Dir: filepath.Join(dir, "state"), CertFile: certFile, KeyFile: keyFile}, clk)
	tok, _, _ := c.MintToken([]string{"web"}, "", time.Hour)
	iss, err := c.Sign(csrFor(t, "web"), ca.Credential{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	var sent []*x509.Certificate
	rest := iss.ChainPEM
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert, _ := x509.ParseCertificate(b.Bytes)
		sent = append(sent, cert)
	}
	if len(sent) != 2 || sent[1].Subject.CommonName != "mesh intermediate" {
		t.Fatalf("chain sent: %d certificates", len(sent))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if err := verify(sent[0], roots, sent[1:], now); err != nil {
		t.Fatalf("leaf against the operator's root: %v", err)
	}
	if string(c.BundlePEM()) != string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})) {
		t.Fatal("the bundle is not the operator's root")
	}
	if err := c.Rotate(); err == nil {
		t.Fatal("rotating an operator's CA should be refused")
	}
}

func TestBadMaterial(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "not a ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, leafTmpl, &key.PublicKey, key)
	certFile, keyFile := filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o644)
	_ = identity.WriteKeyFile(keyFile, key)
	otherKey, _ := identity.NewKey()
	otherKeyFile := filepath.Join(dir, "other.key")
	_ = identity.WriteKeyFile(otherKeyFile, otherKey)
	garbage := filepath.Join(dir, "garbage.crt")
	_ = os.WriteFile(garbage, []byte("not pem"), 0o644)
	for _, tc := range []struct {
		name string
		cfg  ca.Config
		want string
	}{
		{"not a CA", ca.Config{Dir: filepath.Join(dir, "a"), CertFile: certFile, KeyFile: keyFile}, "is not a CA"},
		{"cert without key", ca.Config{Dir: filepath.Join(dir, "b"), CertFile: certFile}, "go together"},
		{"garbage cert", ca.Config{Dir: filepath.Join(dir, "c"), CertFile: garbage, KeyFile: keyFile}, "no PEM certificate"},
		{"no dir", ca.Config{}, "no directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ca.Open(tc.cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// A key that does not belong to the CA certificate.
	good := t.TempDir()
	c := open(t, ca.Config{Dir: good}, &clock{t: now})
	_ = c
	if _, err := ca.Open(ca.Config{Dir: t.TempDir(), CertFile: filepath.Join(good, "ca.crt"), KeyFile: otherKeyFile}, nil); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched key: %v", err)
	}
}

// A CA directory created for one trust domain, opened with another (the
// default, as `mesh control token create --ca-dir` without --trust-domain
// does), is refused naming both: tokens minted so would ask for
// identities the CA never issues.
func TestOpenRefusesAnotherTrustDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	open(t, ca.Config{Dir: dir, TrustDomain: "corp.example"}, &clock{t: time.Now()})
	_, err := ca.Open(ca.Config{Dir: dir}, nil)
	if err == nil || !strings.Contains(err.Error(), "is for trust domain corp.example, not control.ca.trust_domain mesh.local") {
		t.Fatalf("open with the default trust domain: %v", err)
	}
	if _, err := ca.Open(ca.Config{Dir: dir, TrustDomain: "corp.example"}, nil); err != nil {
		t.Fatalf("open with its own trust domain: %v", err)
	}
}

// TestKubernetesServiceIdentity (issue 13): a join token for orders.shop
// (a Kubernetes service orders in namespace shop) gets a certificate for
// spiffe://mesh.local/ns/shop/svc/orders, which renews itself and verifies
// as a workload; it gets nothing for orders (ns/default), and a token for
// orders gets nothing for orders.shop; another trust domain is refused.
func TestKubernetesServiceIdentity(t *testing.T) {
	clk := &clock{t: time.Now()}
	c := open(t, ca.Config{Dir: t.TempDir(), CertTTL: time.Hour}, clk)
	csrIn := func(ns, service string) []byte {
		key, _ := identity.NewKey()
		der, err := identity.NewCSR(key, identity.ID{TrustDomain: "mesh.local", Namespace: ns, Service: service})
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	shopTok, _, err := c.MintToken([]string{"orders.shop"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.Sign(csrIn("shop", "orders"), ca.Credential{Token: shopTok})
	if err != nil {
		t.Fatalf("a token for orders.shop asking for ns/shop/svc/orders: %v", err)
	}
	if iss.ID.String() != "spiffe://mesh.local/ns/shop/svc/orders" || c.ServiceName(iss.ID) != "orders.shop" {
		t.Fatalf("issued %v (%s)", iss.ID, c.ServiceName(iss.ID))
	}
	if id, err := c.VerifyWorkload([]*x509.Certificate{iss.Cert}); err != nil || id != iss.ID {
		t.Fatalf("VerifyWorkload = %v, %v", id, err)
	}
	if _, err := c.Sign(csrIn("shop", "orders"), ca.Credential{Peer: iss.Cert}); err != nil {
		t.Fatalf("renewal of ns/shop/svc/orders: %v", err)
	}
	bareTok, _, _ := c.MintToken([]string{"orders"}, "", time.Hour)
	for _, tc := range []struct {
		name string
		csr  []byte
		cred ca.Credential
		want string
	}{
		{"orders.shop token, ns/default", csrIn("default", "orders"), ca.Credential{Token: shopTok}, "does not allow service orders (it allows orders.shop)"},
		{"orders token, ns/shop", csrIn("shop", "orders"), ca.Credential{Token: bareTok}, "does not allow service orders.shop (it allows orders)"},
		{"renewal into another namespace", csrIn("pay", "orders"), ca.Credential{Peer: iss.Cert}, "is for spiffe://mesh.local/ns/shop/svc/orders"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Sign(tc.csr, tc.cred); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Sign = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	key, _ := identity.NewKey()
	other, _ := identity.NewCSR(key, identity.ID{TrustDomain: "other.local", Namespace: "shop", Service: "orders"})
	if _, err := c.Sign(other, ca.Credential{Token: shopTok}); err == nil || !strings.Contains(err.Error(), "this CA issues spiffe://mesh.local/... only") {
		t.Fatalf("another trust domain: %v", err)
	}
}
