// Package identitytest is a small certificate authority for tests: it
// issues real X.509 SVIDs (ECDSA P-256, a SPIFFE ID URI SAN, server and
// client auth) and writes them to files as an operator's PKI or SPIRE
// would, so that tests of leaves (which cannot import controlplane/ca)
// run real TLS. Test use only: keys are generated per CA and never kept.
package identitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshvm/mesh/identity"
)

// CA is a self-signed test root.
type CA struct {
	TrustDomain, Namespace string
	key                    *ecdsa.PrivateKey
	cert                   *x509.Certificate
	serial                 atomic.Int64
}

var caSerial atomic.Int64

// NewCA returns a root for trust domain td (namespace "default").
func NewCA(t testing.TB, td string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	n := caSerial.Add(1)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1000 + n), Subject: pkix.Name{CommonName: "identitytest root " + td},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{TrustDomain: td, Namespace: identity.DefaultNamespace, key: key, cert: cert}
	ca.serial.Store(time.Now().UnixNano() % 1e9)
	return ca
}

// Bundle is the root as PEM.
func (ca *CA) Bundle() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// ID is the SPIFFE ID of service under this CA.
func (ca *CA) ID(service string) identity.ID {
	return identity.ID{TrustDomain: ca.TrustDomain, Namespace: ca.Namespace, Service: service}
}

// Issue returns a new certificate (PEM) and key (PKCS#8 PEM) for service,
// valid for ttl, with a fresh serial number.
func (ca *CA) Issue(t testing.TB, service string, ttl time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial.Add(1)), Subject: pkix.Name{CommonName: service},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl), URIs: []*url.URL{ca.ID(service).URL()},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = identity.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

// Credentials are loaded Credentials for service.
func (ca *CA) Credentials(t testing.TB, service string) *identity.Credentials {
	t.Helper()
	c, k := ca.Issue(t, service, time.Hour)
	var creds identity.Credentials
	if err := creds.Set(c, k, ca.Bundle(), time.Now()); err != nil {
		t.Fatal(err)
	}
	return &creds
}

// Files are the paths of an identity on disk.
type Files struct {
	Cert, Key, Bundle string
}

// WriteFiles issues a certificate for service and writes it, its key
// (0600) and bundle (the CA's root, or bundle if given: e.g. two roots
// during a root rotation) into dir as cert.pem, key.pem and bundle.pem,
// each replaced atomically, key first so that a reader never pairs the
// new certificate with a key that is not there yet for long.
func (ca *CA) WriteFiles(t testing.TB, dir, service string, ttl time.Duration, bundle []byte) Files {
	t.Helper()
	if bundle == nil {
		bundle = ca.Bundle()
	}
	f := Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), Bundle: filepath.Join(dir, "bundle.pem")}
	c, k := ca.Issue(t, service, ttl)
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{f.Bundle, bundle, 0o644}, {f.Key, k, 0o600}, {f.Cert, c, 0o644}} {
		if err := identity.WriteFileAtomic(w.path, w.data, w.perm); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// KeyPair is a certificate and key (PEM) for service, for a test client
// presenting it directly (tls.X509KeyPair).
func (ca *CA) KeyPair(t testing.TB, service string) (certPEM, keyPEM []byte) {
	return ca.Issue(t, service, time.Hour)
}
