package ca_test

import (
	"testing"
	"time"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
)

// BenchmarkSign is the CA's signing rate: one CSR (made once) checked and
// signed against a join token per operation, as the signing RPC does.
func BenchmarkSign(b *testing.B) {
	c, err := ca.Open(ca.Config{Dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := c.MintToken([]string{"web"}, "", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	key, _ := identity.NewKey()
	id, _ := c.ID("web")
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Sign(csr, ca.Credential{Token: tok}); err != nil {
			b.Fatal(err)
		}
	}
}
