package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
)

// NewKey generates a workload's private key (ECDSA P-256).
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// NewCSR makes a certificate signing request for id, signed by key: the
// SPIFFE ID as its only SAN.
func NewCSR(key crypto.Signer, id ID) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create csr for %s: %w", id, err)
	}
	return der, nil
}

// MaxCSRBytes bounds a CSR the control plane reads.
const MaxCSRBytes = 16 << 10

// ParseCSR checks a certificate signing request as the CA must before it
// signs: DER (or PEM) of at most MaxCSRBytes, a valid self-signature, an
// acceptable public key (ECDSA P-256/P-384, Ed25519, RSA of 2048 bits or
// more), exactly one SAN, a mesh SPIFFE ID URI, and no DNS, IP or e-mail
// SANs. It returns the request and the ID asked for.
func ParseCSR(data []byte) (*x509.CertificateRequest, ID, error) {
	if len(data) > MaxCSRBytes {
		return nil, ID{}, fmt.Errorf("csr: %d bytes, at most %d", len(data), MaxCSRBytes)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" {
			return nil, ID{}, fmt.Errorf("csr: PEM block %q, want CERTIFICATE REQUEST", b.Type)
		}
		data = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, ID{}, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, ID{}, fmt.Errorf("csr: bad signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, ID{}, fmt.Errorf("csr: %w", err)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, ID{}, errors.New("csr: DNS, IP and e-mail SANs are not allowed: a workload is named by its SPIFFE ID alone")
	}
	id, err := fromURIs(csr.URIs)
	if err != nil {
		return nil, ID{}, fmt.Errorf("csr: %w", err)
	}
	return csr, id, nil
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s: want P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
	default:
		return fmt.Errorf("public key type %T not accepted", pub)
	}
	return nil
}

// WriteKeyFile writes key to path as PKCS#8 PEM, mode 0600, atomically
// (a temporary file renamed over path), so a crash never leaves half a
// key.
func WriteKeyFile(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	return WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// ReadKeyFile reads a PKCS#8 (or SEC 1 EC, or PKCS#1 RSA) PEM private key.
func ReadKeyFile(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("key %s: no PEM block", path)
	}
	var k any
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("key %s: PEM block %q is not a private key", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: %T cannot sign", path, k)
	}
	return s, nil
}

// WriteFileAtomic writes data to path with mode perm through a temporary
// file in the same directory, synced and renamed over path.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
