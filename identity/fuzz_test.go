package identity_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/identity"
)

// FuzzParseCSR: whatever bytes arrive as a CSR, ParseCSR returns an error
// or a request whose one SAN is a valid mesh SPIFFE ID; it never panics.
func FuzzParseCSR(f *testing.F) {
	key, _ := identity.NewKey()
	id, _ := identity.NewID("mesh.local", "default", "web")
	der, _ := identity.NewCSR(key, id)
	f.Add(der)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, got, err := identity.ParseCSR(data)
		if err != nil {
			return
		}
		if csr == nil || got.Validate() != nil {
			t.Fatalf("accepted a CSR with id %v", got)
		}
	})
}

// FuzzParseToken: a token string either fails to parse or carries valid
// claims signed by the known key.
func FuzzParseToken(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	tok, _ := identity.SignToken(priv, identity.Claims{ID: "t1", KeyID: "k1", TrustDomain: "mesh.local",
		Services: []string{"web", "api"}, IssuedAt: now.Unix(), Expires: now.Add(time.Hour).Unix()})
	f.Add(tok)
	f.Add("mesh1.e30.AAAA")
	f.Add("mesh1..")
	keys := func(kid string) ed25519.PublicKey {
		if kid == "k1" {
			return pub
		}
		return nil
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := identity.ParseToken(s, keys)
		if err != nil {
			return
		}
		if c.KeyID != "k1" || len(c.Services) == 0 {
			t.Fatalf("accepted claims %+v", c)
		}
	})
}

// FuzzReadTokenClaims: the agent's unverified read of its own token
// either fails or returns claims that pass validation (CA hashes of the
// sha256:<hex> form); it never panics.
func FuzzReadTokenClaims(f *testing.F) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	tok, _ := identity.SignToken(priv, identity.Claims{ID: "t1", KeyID: "k1", TrustDomain: "mesh.local", Namespace: "shop",
		Services: []string{"web"}, IssuedAt: now.Unix(), Expires: now.Add(time.Hour).Unix(),
		CAHashes: []string{"sha256:" + strings.Repeat("ab", 32)}})
	f.Add(tok)
	f.Add("mesh1.eyJjYSI6WyJ4Il19.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := identity.ReadTokenClaims(s)
		if err != nil {
			return
		}
		for _, h := range c.CAHashes {
			if !strings.HasPrefix(h, "sha256:") || len(h) != 71 {
				t.Fatalf("accepted CA hash %q", h)
			}
		}
	})
}
