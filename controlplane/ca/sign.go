package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Credential is what a workload presents with its CSR: a join token, or
// (to renew) the certificate it holds now, verified by the TLS handshake
// or the caller. Node is the node name the workload runs on.
type Credential struct {
	Token string
	Peer  *x509.Certificate
	Node  string
	// Verified, when set, names a credential the caller already checked
	// for the CSR's service (a Consul ACL token granting service:write,
	// "consul:<accessor id>"); it is recorded as the Issued's TokenID.
	Verified string
}

// Issued is a signed workload certificate.
type Issued struct {
	ID       identity.ID
	Cert     *x509.Certificate
	ChainPEM []byte // the certificate, then any intermediates
	Expires  time.Time
	// TokenID names the join token it was issued against ("" for a
	// renewal).
	TokenID string
}

// Sign issues a certificate for the CSR's SPIFFE ID, if cred allows that
// identity: the ID must be in the CA's trust domain (in its namespace,
// or for a Kubernetes service such as orders.shop in the service's:
// identity.ForService), and either the join token names its service
// (orders.shop for ns/shop/svc/orders; and node, when bound) and is
// neither expired nor revoked, or the peer certificate is one this CA's
// bundle trusts, still valid, for the same ID.
func (c *CA) Sign(csrDER []byte, cred Credential) (*Issued, error) {
	csr, id, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if id.TrustDomain != c.cfg.TrustDomain {
		return nil, fmt.Errorf("csr asks for %s: this CA issues spiffe://%s/... only", id, c.cfg.TrustDomain)
	}
	if id.Service == wire.ControlPlaneService {
		return nil, errReserved
	}
	now := c.now()
	var tokenID string
	switch {
	case cred.Token != "":
		claims, err := c.VerifyToken(cred.Token)
		if err != nil {
			return nil, err
		}
		if err := claims.Check(id, cred.Node, now); err != nil {
			return nil, err
		}
		tokenID = claims.ID
	case cred.Peer != nil:
		if err := c.verifyPeer(cred.Peer, id, now); err != nil {
			return nil, err
		}
	case cred.Verified != "":
		tokenID = cred.Verified
	default:
		return nil, errors.New("no credential: present a join token or the current certificate")
	}
	return c.issue(csr, id, now, tokenID)
}

// verifyPeer checks a renewal: peer chains to the bundle, is valid now,
// and is for id.
func (c *CA) verifyPeer(peer *x509.Certificate, id identity.ID, now time.Time) error {
	c.mu.RLock()
	pool := c.pool
	inter := x509.NewCertPool()
	for _, i := range c.chain {
		inter.AddCert(i)
	}
	c.mu.RUnlock()
	if _, err := peer.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("renewal: the presented certificate is not valid: %w", err)
	}
	got, err := identity.FromCertificate(peer)
	if err != nil {
		return fmt.Errorf("renewal: %w", err)
	}
	if got != id {
		return fmt.Errorf("renewal: the presented certificate is for %s, the csr asks for %s", got, id)
	}
	return nil
}

func (c *CA) issue(csr *x509.CertificateRequest, id identity.ID, now time.Time, tokenID string) (*Issued, error) {
	c.mu.RLock()
	signer, ca, chain := c.signer, c.cert, c.chain
	c.mu.RUnlock()
	notAfter := now.Add(c.cfg.CertTTL)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{id.TrustDomain}},
		NotBefore:             now.Add(-time.Minute), // clock skew between VMs
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	return &Issued{ID: id, Cert: cert, ChainPEM: encodeCerts(append([]*x509.Certificate{cert}, chain...)...), Expires: notAfter, TokenID: tokenID}, nil
}
