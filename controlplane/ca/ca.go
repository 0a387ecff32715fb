// Package ca is mesh control's certificate authority. It keeps its
// material in one directory (control.ca.dir), created at first start:
//
//	ca.crt, ca.key   the signing CA: a self-signed root generated here, or
//	                 the operator's root or intermediate (cert_file and
//	                 key_file; an intermediate's file carries its chain)
//	bundle.crt       the roots agents trust: the signing root plus, during a
//	                 root rotation, the previous ones
//	token.key        the Ed25519 key join tokens are signed with
//	revoked          revoked join-token IDs, one per line
//
// Several control planes serve the same mesh by sharing these files
// (Ansible distributes them; docs/operations.md). The CA signs X.509 SVIDs
// for a workload's CSR only against a credential: a join token naming the
// service (and node), or the workload's current, valid certificate for the
// same identity (renewal, so an expired token never stops rotation).
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshvm/mesh/identity"
)

// Config is the CA's part of control.ca.
type Config struct {
	// Dir holds the CA material (created 0700 if missing).
	Dir string
	// TrustDomain and Namespace name the identities it issues.
	TrustDomain string
	Namespace   string
	// CertTTL is the lifetime of issued certificates (default 24h).
	CertTTL time.Duration
	// CertFile and KeyFile, when set, are the operator's CA (a root, or an
	// intermediate followed by its chain) used instead of a generated root.
	CertFile, KeyFile string
}

// File names inside Dir.
const (
	certName    = "ca.crt"
	keyName     = "ca.key"
	bundleName  = "bundle.crt"
	tokenName   = "token.key"
	revokedName = "revoked"
)

// rootTTL is the lifetime of a generated root.
const rootTTL = 10 * 365 * 24 * time.Hour

// CA signs workload certificates and join tokens.
type CA struct {
	cfg Config
	now func() time.Time

	mu     sync.RWMutex
	signer crypto.Signer
	cert   *x509.Certificate   // the signing CA
	chain  []*x509.Certificate // sent after a leaf: the signing CA if an intermediate, up to the root (excluded)
	roots  []*x509.Certificate // the trust bundle
	pool   *x509.CertPool

	tokenKey ed25519.PrivateKey
	keyID    string

	revokedMu    sync.Mutex
	revoked      map[string]bool
	revokedMtime time.Time
}

// Open loads the CA from cfg.Dir, creating its material there the first
// time (a new root unless the operator gave one, a token key, the
// bundle). now may be nil for time.Now.
func Open(cfg Config, now func() time.Time) (*CA, error) {
	if now == nil {
		now = time.Now
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.Namespace == "" {
		cfg.Namespace = identity.DefaultNamespace
	}
	if cfg.Dir == "" {
		return nil, errors.New("ca: no directory (control.ca.dir)")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	c := &CA{cfg: cfg, now: now}
	if err := c.loadSigner(); err != nil {
		return nil, err
	}
	if err := c.loadBundle(); err != nil {
		return nil, err
	}
	if err := c.loadTokenKey(); err != nil {
		return nil, err
	}
	if _, err := c.revokedSet(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CA) path(name string) string { return filepath.Join(c.cfg.Dir, name) }

// loadSigner reads the signing CA: the operator's files, else ca.crt and
// ca.key in Dir, else a new self-signed root written there.
func (c *CA) loadSigner() error {
	certFile, keyFile := c.cfg.CertFile, c.cfg.KeyFile
	if (certFile == "") != (keyFile == "") {
		return errors.New("ca: cert_file and key_file go together")
	}
	if certFile == "" {
		certFile, keyFile = c.path(certName), c.path(keyName)
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			return c.generateRoot()
		}
	}
	certs, err := readCerts(certFile)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	key, err := identity.ReadKeyFile(keyFile)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return c.setSigner(certs, key)
}

func (c *CA) setSigner(certs []*x509.Certificate, key crypto.Signer) error {
	ca := certs[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("ca: certificate %q is not a CA (basic constraints CA and key usage certSign needed)", ca.Subject)
	}
	if !publicKeyMatches(ca.PublicKey, key.Public()) {
		return fmt.Errorf("ca: the key does not belong to certificate %q", ca.Subject)
	}
	if now := c.now(); now.After(ca.NotAfter) {
		return fmt.Errorf("ca: certificate %q expired at %s", ca.Subject, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	// A CA naming its trust domain (mesh's roots do, as SPIRE's do) must
	// name the configured one: else tokens minted against the directory
	// with the default trust domain would ask for identities it never
	// issues (and agents would refuse mesh control's certificate).
	for _, u := range ca.URIs {
		if u.Scheme == "spiffe" && u.Host != "" && u.Host != c.cfg.TrustDomain {
			return fmt.Errorf("ca: certificate %q is for trust domain %s, not control.ca.trust_domain %s (give --trust-domain %s or --config)",
				ca.Subject, u.Host, c.cfg.TrustDomain, u.Host)
		}
	}
	// The chain sent with each certificate: the signing CA when it is an
	// intermediate, and the intermediates above it; the root goes in the
	// bundle, not the chain.
	var chain []*x509.Certificate
	if !isSelfSigned(ca) {
		chain = append(chain, certs...)
		if n := len(chain); isSelfSigned(chain[n-1]) {
			chain = chain[:n-1]
		}
	}
	c.mu.Lock()
	c.signer, c.cert, c.chain = key, ca, chain
	c.mu.Unlock()
	return nil
}

func (c *CA) generateRoot() error {
	cert, key, err := newRoot(c.cfg.TrustDomain, c.now())
	if err != nil {
		return err
	}
	if err := identity.WriteKeyFile(c.path(keyName), key); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if err := identity.WriteFileAtomic(c.path(certName), encodeCerts(cert), 0o644); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return c.setSigner([]*x509.Certificate{cert}, key)
}

func newRoot(td string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"mesh"}, CommonName: "mesh root CA " + td + " " + now.UTC().Format("2006-01-02") + " " + serial().Text(16)[:8]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(rootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: parse root: %w", err)
	}
	return cert, key, nil
}

// loadBundle reads bundle.crt, creating it with the signing CA's root.
func (c *CA) loadBundle() error {
	path := c.path(bundleName)
	roots, err := readCerts(path)
	if errors.Is(err, os.ErrNotExist) {
		root, err := c.signingRoot()
		if err != nil {
			return err
		}
		if err := identity.WriteFileAtomic(path, encodeCerts(root), 0o644); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		roots = []*x509.Certificate{root}
	} else if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return c.setRoots(roots)
}

// signingRoot is the root the signing CA chains to: itself when
// self-signed, else the last certificate of the operator's chain file.
func (c *CA) signingRoot() (*x509.Certificate, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if isSelfSigned(c.cert) {
		return c.cert, nil
	}
	if c.cfg.CertFile != "" {
		certs, err := readCerts(c.cfg.CertFile)
		if err == nil && isSelfSigned(certs[len(certs)-1]) {
			return certs[len(certs)-1], nil
		}
	}
	return nil, fmt.Errorf("ca: intermediate %q: put its root in %s or at the end of cert_file", c.cert.Subject, c.path(bundleName))
}

func (c *CA) setRoots(roots []*x509.Certificate) error {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	inter := x509.NewCertPool()
	for _, i := range c.chain {
		inter.AddCert(i)
	}
	if _, err := c.cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: c.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("ca: the signing CA %q does not chain to the trust bundle: %w", c.cert.Subject, err)
	}
	c.roots, c.pool = roots, pool
	return nil
}

func (c *CA) loadTokenKey() error {
	path := c.path(tokenName)
	var key ed25519.PrivateKey
	s, err := identity.ReadKeyFile(path)
	switch {
	case err == nil:
		k, ok := s.(ed25519.PrivateKey)
		if !ok {
			return fmt.Errorf("ca: %s is a %T, want an Ed25519 key", path, s)
		}
		key = k
	case errors.Is(err, os.ErrNotExist):
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("ca: generate token key: %w", err)
		}
		if err := identity.WriteKeyFile(path, k); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		key = k
	default:
		return fmt.Errorf("ca: %w", err)
	}
	sum := sha256.Sum256(key.Public().(ed25519.PublicKey))
	c.tokenKey, c.keyID = key, hex.EncodeToString(sum[:8])
	return nil
}

// TrustDomain is the trust domain of the identities the CA issues.
func (c *CA) TrustDomain() string { return c.cfg.TrustDomain }

// Namespace is the namespace of the identities of undotted service names.
func (c *CA) Namespace() string { return c.cfg.Namespace }

// ServiceName is the mesh service name of id (ID's inverse): orders for
// an identity in the CA's namespace, orders.shop for ns/shop/svc/orders.
func (c *CA) ServiceName(id identity.ID) string { return id.ServiceName(c.cfg.Namespace) }

// ID returns the identity of service in the CA's trust domain: in its
// namespace, or for a dotted name (orders.shop) in the name's.
func (c *CA) ID(service string) (identity.ID, error) {
	return identity.ForService(c.cfg.TrustDomain, c.cfg.Namespace, service)
}

// BundlePEM is the trust bundle: every root a workload must trust.
func (c *CA) BundlePEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return encodeCerts(c.roots...)
}

// Roots returns the trust bundle's certificates.
func (c *CA) Roots() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.roots)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeyMatches(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := identity.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// sanitize keeps a revoked file's line to a token ID.
func sanitize(line string) string { return strings.TrimSpace(line) }
