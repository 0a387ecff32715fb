package identity

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Credentials are a workload's current identity for TLS: its certificate
// chain and private key, and the trust bundle it verifies peers against.
// Set swaps them atomically: new handshakes use the new ones, connections
// already up finish with theirs. Safe for concurrent use.
type Credentials struct {
	cur atomic.Pointer[credState]
}

type credState struct {
	cert  tls.Certificate
	leaf  *x509.Certificate
	id    ID
	roots *x509.CertPool
	// bundle is the trust bundle's PEM, rootCerts its certificates.
	bundle    []byte
	rootCerts []*x509.Certificate
}

// Set installs a certificate chain (PEM, leaf first), its private key and
// the trust bundle (PEM). The leaf must carry a SPIFFE ID, match the key,
// and chain to the bundle now.
func (c *Credentials) Set(chainPEM, keyPEM, bundlePEM []byte, now time.Time) error {
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("identity: certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("identity: certificate: %w", err)
		}
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return fmt.Errorf("identity: certificate: %w", err)
	}
	roots, rootCerts, err := parseBundle(bundlePEM)
	if err != nil {
		return err
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates(cert.Certificate[1:]), CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("identity: certificate for %s does not chain to the trust bundle: %w", id, err)
	}
	cert.Leaf = leaf
	c.cur.Store(&credState{cert: cert, leaf: leaf, id: id, roots: roots, bundle: bundlePEM, rootCerts: rootCerts})
	return nil
}

// SetBundle installs a new trust bundle (PEM) beside the current
// certificate: new handshakes verify peers against it (a root rotation
// reaching a running agent). It reports whether the current certificate
// still chains to it; when it does not, the holder must renew.
func (c *Credentials) SetBundle(bundlePEM []byte, now time.Time) (chains bool, err error) {
	s := c.cur.Load()
	if s == nil {
		return false, ErrNoIdentity
	}
	roots, rootCerts, err := parseBundle(bundlePEM)
	if err != nil {
		return false, err
	}
	_, verr := s.leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates(s.cert.Certificate[1:]), CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	next := *s
	next.roots, next.bundle, next.rootCerts = roots, bundlePEM, rootCerts
	c.cur.Store(&next)
	return verr == nil, nil
}

// BundlePEM is the current trust bundle (nil before Set).
func (c *Credentials) BundlePEM() []byte {
	if s := c.cur.Load(); s != nil {
		return s.bundle
	}
	return nil
}

// Roots returns the current trust bundle's certificates.
func (c *Credentials) Roots() []*x509.Certificate {
	if s := c.cur.Load(); s != nil {
		return s.rootCerts
	}
	return nil
}

// RootPool is the current trust bundle as a pool (nil before Set).
func (c *Credentials) RootPool() *x509.CertPool {
	if s := c.cur.Load(); s != nil {
		return s.roots
	}
	return nil
}

// TLSCertificate is the current certificate and key for a TLS
// handshake, nil before Set.
func (c *Credentials) TLSCertificate() *tls.Certificate {
	if s := c.cur.Load(); s != nil {
		return &s.cert
	}
	return nil
}

// ParseCertificates reads every CERTIFICATE block of a PEM text, in
// order (other blocks are skipped); it is an error when there is none.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// parseBundle reads a trust bundle's PEM certificates.
func parseBundle(bundlePEM []byte) (*x509.CertPool, []*x509.Certificate, error) {
	certs, err := ParseCertificates(bundlePEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: trust bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, cert := range certs {
		pool.AddCert(cert)
	}
	return pool, certs, nil
}

// ID is the current identity (zero before Set).
func (c *Credentials) ID() ID {
	if s := c.cur.Load(); s != nil {
		return s.id
	}
	return ID{}
}

// Expiry is the current certificate's NotAfter (zero before Set).
func (c *Credentials) Expiry() time.Time {
	if s := c.cur.Load(); s != nil {
		return s.leaf.NotAfter
	}
	return time.Time{}
}

// Leaf is the current certificate (nil before Set).
func (c *Credentials) Leaf() *x509.Certificate {
	if s := c.cur.Load(); s != nil {
		return s.leaf
	}
	return nil
}

// ErrNoIdentity: no certificate was set yet.
var ErrNoIdentity = errors.New("identity: no certificate yet")

func (c *Credentials) certificate() (*tls.Certificate, error) {
	s := c.cur.Load()
	if s == nil {
		return nil, ErrNoIdentity
	}
	return &s.cert, nil
}

// ServerConfig is the TLS 1.3 server side of mTLS: it presents the current
// certificate, asks for the client's, and verifies it against the current
// bundle (an X.509 SVID with a SPIFFE ID). With requireClient false a
// client without a certificate is let through (permissive mode; PeerID then
// fails); a client certificate that is present is always verified. allow,
// if not nil, is called with the verified caller's ID (authorization at the
// handshake, for L4 rules).
func (c *Credentials) ServerConfig(requireClient bool, allow func(ID) error) *tls.Config {
	auth := tls.RequireAnyClientCert
	if !requireClient {
		auth = tls.RequestClientCert
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: auth,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				if requireClient {
					return errors.New("identity: the client presented no certificate (mTLS strict)")
				}
				return nil
			}
			id, err := c.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			if allow != nil {
				return allow(id)
			}
			return nil
		},
	}
}

// ClientConfig is the TLS 1.3 client side of mTLS to a workload that must
// be want: it presents the current certificate and verifies the server's
// against the current bundle and its SPIFFE ID against want.
func (c *Credentials) ClientConfig(want ID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The peer is verified in VerifyConnection, by SPIFFE ID rather
		// than host name (the standard verification would need a DNS SAN).
		InsecureSkipVerify: true, //nolint:gosec // verified below
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := c.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != want {
				return fmt.Errorf("identity: the server is %s, want %s", id, want)
			}
			return nil
		},
	}
}

// verify checks a peer's chain against the current bundle and returns its
// SPIFFE ID.
func (c *Credentials) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (ID, error) {
	s := c.cur.Load()
	if s == nil {
		return ID{}, ErrNoIdentity
	}
	if len(chain) == 0 {
		return ID{}, errors.New("identity: the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, i := range chain[1:] {
		inter.AddCert(i)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ID{}, fmt.Errorf("identity: peer certificate: %w", err)
	}
	id, err := FromCertificate(chain[0])
	if err != nil {
		return ID{}, fmt.Errorf("identity: peer certificate: %w", err)
	}
	if id.TrustDomain != s.id.TrustDomain {
		return ID{}, fmt.Errorf("identity: peer %s is not in trust domain %s", id, s.id.TrustDomain)
	}
	return id, nil
}

// PeerID is the verified SPIFFE ID of a connection's peer (after a
// handshake under ServerConfig or ClientConfig).
func PeerID(cs tls.ConnectionState) (ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ID{}, errors.New("identity: the peer presented no certificate")
	}
	return FromCertificate(cs.PeerCertificates[0])
}

func intermediates(ders [][]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, d := range ders {
		if c, err := x509.ParseCertificate(d); err == nil {
			p.AddCert(c)
		}
	}
	return p
}

// EncodeKey is a private key as PKCS#8 PEM (for Credentials.Set and the
// on-disk cache).
func EncodeKey(key any) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
