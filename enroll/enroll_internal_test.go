package enroll

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/identity"
)

// selfSigned returns a certificate (PEM) and key (PEM) for id valid from
// notBefore to notAfter; it is its own trust bundle.
func selfSigned(t *testing.T, id identity.ID, notBefore, notAfter time.Time) ([]byte, []byte) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: notBefore, NotAfter: notAfter,
		URIs: []*url.URL{id.URL()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := identity.EncodeKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

// TestIdentityReadyWarnsNearExpiry: /ready's identity condition warns
// (reported, never required) once under 10% of the certificate's life is
// left, and the dump names the certificate without its key.
func TestIdentityReadyWarnsNearExpiry(t *testing.T) {
	id, _ := identity.NewID("mesh.local", "default", "web")
	for _, tc := range []struct {
		name   string
		before time.Duration // NotBefore relative to now
		after  time.Duration // NotAfter relative to now
		ok     bool
		detail string
	}{
		{name: "fresh", before: -time.Hour, after: 23 * time.Hour, ok: true, detail: "certificate expires"},
		{name: "under 10% left", before: -23 * time.Hour, after: time.Hour, detail: "under 10% of its lifetime left"},
		{name: "expired", before: -25 * time.Hour, after: -time.Hour, detail: "certificate expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			cert, key := selfSigned(t, id, now.Add(tc.before), now.Add(tc.after))
			ai := &Enrollment{id: id, creds: &identity.Credentials{}, log: zerolog.Nop()}
			ai.rot = &identity.Rotator{ID: id, Creds: ai.creds, Dir: t.TempDir()}
			// Set verifies against now; install at a time the certificate is valid.
			if err := ai.creds.Set(cert, key, cert, now.Add(tc.before).Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			c := ai.Condition()
			if c.Required || c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("condition %+v, want ok=%v and %q", c, tc.ok, tc.detail)
			}
			b, _ := json.Marshal(ai.Dump())
			if strings.Contains(string(b), "PRIVATE KEY") || !strings.Contains(string(b), `"serial":"7"`) {
				t.Errorf("dump %s", b)
			}
		})
	}
}
