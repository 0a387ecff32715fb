package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// ControlPlaneID is the identity of mesh control's own xDS server
// certificate.
func (c *CA) ControlPlaneID() (identity.ID, error) { return c.ID(wire.ControlPlaneService) }

// IssueServer signs the control plane's own xDS server certificate for
// pub: its SPIFFE ID (ControlPlaneID) plus the DNS and IP SANs clients that
// verify host names (gRPC proxyless clients, Envoy) dial. The chain ends
// with the signing root, so an agent that pins the root by its
// fingerprint (a join token's CA hashes) finds it in the handshake.
func (c *CA) IssueServer(pub crypto.PublicKey, dns []string, ips []net.IP) (*Issued, error) {
	id, err := c.ControlPlaneID()
	if err != nil {
		return nil, err
	}
	now := c.now()
	c.mu.RLock()
	signer, ca, chain := c.signer, c.cert, c.chain
	c.mu.RUnlock()
	notAfter := now.Add(c.cfg.CertTTL)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{id.TrustDomain}, CommonName: wire.ControlPlaneService},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign the control plane's server certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign the control plane's server certificate: %w", err)
	}
	full := append([]*x509.Certificate{cert}, chain...)
	if root, err := c.signingRoot(); err == nil {
		full = append(full, root)
	}
	return &Issued{ID: id, Cert: cert, ChainPEM: encodeCerts(full...), Expires: notAfter}, nil
}

// Reload re-reads the CA material from Dir when it changed on disk (a
// `mesh control ca rotate` or `retire` run by the operator, or files
// Ansible distributed from another control plane) and reports whether the
// trust bundle or the signing CA changed. On error the CA in force stays.
func (c *CA) Reload() (bool, error) {
	bundle, err := os.ReadFile(c.path(bundleName))
	if err != nil {
		return false, fmt.Errorf("ca reload: %w", err)
	}
	certFile := c.cfg.CertFile
	if certFile == "" {
		certFile = c.path(certName)
	}
	signing, err := os.ReadFile(certFile)
	if err != nil {
		return false, fmt.Errorf("ca reload: %w", err)
	}
	c.mu.RLock()
	same := bytes.Equal(bundle, encodeCerts(c.roots...)) && bytes.Equal(signing, encodeCerts(append([]*x509.Certificate{c.cert}, c.chain...)...))
	sameRoots := bytes.Equal(bundle, encodeCerts(c.roots...))
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	next := &CA{cfg: c.cfg, now: c.now}
	if err := next.loadSigner(); err != nil {
		return false, err
	}
	if err := next.loadBundle(); err != nil {
		return false, err
	}
	next.mu.RLock()
	c.mu.Lock()
	changed := !sameRoots || !next.cert.Equal(c.cert)
	c.signer, c.cert, c.chain, c.roots, c.pool = next.signer, next.cert, next.chain, next.roots, next.pool
	c.mu.Unlock()
	next.mu.RUnlock()
	return changed, nil
}

// CAHashes are the fingerprints (identity.CAFingerprint) of the bundle's
// roots, carried by the join tokens minted now.
func (c *CA) CAHashes() []string {
	var out []string
	for _, r := range c.Roots() {
		out = append(out, identity.CAFingerprint(r))
	}
	return out
}

// errReserved refuses a workload identity for the control plane's name.
var errReserved = errors.New(wire.ControlPlaneService + " is the control plane's own identity: no workload or token may hold it")

// VerifyWorkload checks a workload's certificate chain (leaf first, as a
// TLS peer presents it) against the trust bundle, for client use, valid
// now, with a SPIFFE ID of this CA's trust domain (any namespace: the CA
// issues orders.shop's in shop), and returns that ID.
func (c *CA) VerifyWorkload(chain []*x509.Certificate) (identity.ID, error) {
	if len(chain) == 0 {
		return identity.ID{}, errors.New("no client certificate")
	}
	c.mu.RLock()
	pool := c.pool
	c.mu.RUnlock()
	inter := x509.NewCertPool()
	for _, i := range chain[1:] {
		inter.AddCert(i)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: c.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return identity.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	id, err := identity.FromCertificate(chain[0])
	if err != nil {
		return identity.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	if id.TrustDomain != c.cfg.TrustDomain {
		return identity.ID{}, fmt.Errorf("client certificate %s: not of spiffe://%s", id, c.cfg.TrustDomain)
	}
	return id, nil
}
