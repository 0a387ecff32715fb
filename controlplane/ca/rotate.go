package ca

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/meshvm/mesh/identity"
)

// Rotate starts a root rotation: a new self-signed root becomes the
// signing CA, and the trust bundle holds the old roots and the new one, so
// workloads with certificates from either keep trusting each other while
// they renew onto the new root. Once every workload renewed (one
// cert_ttl), RetireRoots drops the old roots. With an operator's CA
// (cert_file), rotate by replacing those files instead.
func (c *CA) Rotate() error {
	if c.cfg.CertFile != "" {
		return errors.New("rotate: the CA comes from cert_file/key_file: replace those files (old and new roots in bundle.crt)")
	}
	cert, key, err := newRoot(c.cfg.TrustDomain, c.now())
	if err != nil {
		return err
	}
	roots := append(c.Roots(), cert)
	if err := identity.WriteFileAtomic(c.path(bundleName), encodeCerts(roots...), 0o644); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if err := identity.WriteKeyFile(c.path(keyName), key); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if err := identity.WriteFileAtomic(c.path(certName), encodeCerts(cert), 0o644); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if err := c.setSigner([]*x509.Certificate{cert}, key); err != nil {
		return err
	}
	return c.setRoots(roots)
}

// RetireRoots drops every root but the signing CA's from the bundle.
func (c *CA) RetireRoots() error {
	root, err := c.signingRoot()
	if err != nil {
		return err
	}
	if err := identity.WriteFileAtomic(c.path(bundleName), encodeCerts(root), 0o644); err != nil {
		return fmt.Errorf("retire roots: %w", err)
	}
	return c.setRoots([]*x509.Certificate{root})
}
