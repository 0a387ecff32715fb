package identity_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/identity"
)

func TestID(t *testing.T) {
	id, err := identity.NewID("mesh.local", "default", "orders")
	if err != nil {
		t.Fatal(err)
	}
	if got := id.String(); got != "spiffe://mesh.local/ns/default/svc/orders" {
		t.Fatalf("String() = %q", got)
	}
	back, err := identity.ParseID(id.String())
	if err != nil || back != id {
		t.Fatalf("ParseID round trip: %v %v", back, err)
	}
	for _, bad := range []struct{ name, in, want string }{
		{"other scheme", "https://mesh.local/ns/default/svc/orders", "want spiffe://"},
		{"no svc", "spiffe://mesh.local/ns/default", "want the path"},
		{"extra segment", "spiffe://mesh.local/ns/default/svc/orders/x", "want the path"},
		{"upper case", "spiffe://mesh.local/ns/default/svc/Orders", `service "Orders"`},
		{"port", "spiffe://mesh.local:8443/ns/default/svc/orders", "want spiffe://"},
		{"user", "spiffe://a@mesh.local/ns/default/svc/orders", "want spiffe://"},
		{"query", "spiffe://mesh.local/ns/default/svc/orders?x=1", "want spiffe://"},
		{"empty trust domain", "spiffe:///ns/default/svc/orders", "trust domain"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			_, err := identity.ParseID(bad.in)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("ParseID(%q) = %v, want an error containing %q", bad.in, err, bad.want)
			}
		})
	}
}

func mustID(t testing.TB, svc string) identity.ID {
	t.Helper()
	id, err := identity.NewID("mesh.local", "default", svc)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCSR(t *testing.T) {
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := identity.NewCSR(key, mustID(t, "web"))
	if err != nil {
		t.Fatal(err)
	}
	_, id, err := identity.ParseCSR(der)
	if err != nil || id.Service != "web" {
		t.Fatalf("ParseCSR: %v %v", id, err)
	}
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	if _, id, err := identity.ParseCSR(pemCSR); err != nil || id.Service != "web" {
		t.Fatalf("ParseCSR(PEM): %v %v", id, err)
	}

	spiffe := mustID(t, "web").URL()
	other, _ := url.Parse("spiffe://mesh.local/ns/default/svc/orders")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	mk := func(key any, tmpl *x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	tampered := append([]byte(nil), der...)
	tampered[len(tampered)-5] ^= 0xff
	for _, c := range []struct {
		name string
		der  []byte
		want string
	}{
		{"no SAN", mk(key, &x509.CertificateRequest{}), "no URI SAN"},
		{"two SPIFFE IDs", mk(key, &x509.CertificateRequest{URIs: []*url.URL{spiffe, other}}), "2 URI SANs"},
		{"DNS SAN too", mk(key, &x509.CertificateRequest{URIs: []*url.URL{spiffe}, DNSNames: []string{"evil.example"}}), "DNS, IP and e-mail SANs are not allowed"},
		{"small RSA key", mk(small, &x509.CertificateRequest{URIs: []*url.URL{spiffe}}), "RSA key of 1024 bits"},
		{"P-224", mk(p224, &x509.CertificateRequest{URIs: []*url.URL{spiffe}}), "ECDSA curve P-224"},
		{"tampered", tampered, "csr:"},
		{"garbage", []byte("hello"), "csr:"},
		{"certificate PEM", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), `PEM block "CERTIFICATE"`},
		{"too large", make([]byte, identity.MaxCSRBytes+1), "at most"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := identity.ParseCSR(c.der); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseCSR = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestKeyFile(t *testing.T) {
	key, _ := identity.NewKey()
	path := filepath.Join(t.TempDir(), "agent.key")
	if err := identity.WriteKeyFile(path, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	back, err := identity.ReadKeyFile(path)
	if err != nil || !back.(*ecdsa.PrivateKey).Equal(key) {
		t.Fatalf("ReadKeyFile: %v", err)
	}
}

func TestToken(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	claims := identity.Claims{ID: identity.NewTokenID(), KeyID: "k1", TrustDomain: "mesh.local",
		Services: []string{"web"}, Node: "vm-1", IssuedAt: now.Unix(), Expires: now.Add(time.Hour).Unix()}
	tok, err := identity.SignToken(priv, claims)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(kid string) ed25519.PublicKey {
		if kid == "k1" {
			return pub
		}
		return nil
	}
	got, err := identity.ParseToken(tok+"\n", keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Check(mustID(t, "web"), "vm-1", now); err != nil {
		t.Fatalf("Check web on vm-1: %v", err)
	}
	for _, c := range []struct {
		name string
		id   identity.ID
		node string
		at   time.Time
		want string
	}{
		{"other service", mustID(t, "orders"), "vm-1", now, "does not allow service orders"},
		{"other node", mustID(t, "web"), "vm-2", now, "bound to node vm-1"},
		{"expired", mustID(t, "web"), "vm-1", now.Add(2 * time.Hour), "expired at"},
		{"other trust domain", identity.ID{TrustDomain: "other.local", Namespace: "default", Service: "web"}, "vm-1", now, "trust domain mesh.local"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := got.Check(c.id, c.node, c.at); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Check = %v, want an error containing %q", err, c.want)
			}
		})
	}

	forged, _ := identity.SignToken(otherPriv, claims) // same kid, another key
	body := strings.Split(tok, ".")
	swapped := claims
	swapped.Services = []string{"orders"}
	evil, _ := identity.SignToken(otherPriv, swapped)
	spliced := "mesh1." + strings.Split(evil, ".")[1] + "." + body[2] // orders claims, web's signature
	unknownKid := claims
	unknownKid.KeyID = "k9"
	unknown, _ := identity.SignToken(priv, unknownKid)
	for _, c := range []struct{ name, tok, want string }{
		{"forged signature", forged, "bad signature"},
		{"spliced claims", spliced, "bad signature"},
		{"unknown key", unknown, `unknown key "k9"`},
		{"not a token", "hello", "not a mesh join token"},
		{"no signature", "mesh1.abc", "missing signature"},
		{"bad base64", "mesh1.!!!.abc", "not base64url"},
		{"too long", "mesh1." + strings.Repeat("a", identity.MaxTokenBytes), "at most"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := identity.ParseToken(c.tok, keys); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseToken = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestForService: the one mapping from mesh service names to SPIFFE IDs.
func TestForService(t *testing.T) {
	for in, want := range map[string]string{
		"orders":      "spiffe://mesh.local/ns/default/svc/orders",
		"orders.shop": "spiffe://mesh.local/ns/shop/svc/orders",
	} {
		id, err := identity.ForService("mesh.local", "default", in)
		if err != nil || id.String() != want {
			t.Errorf("ForService(%q) = %v, %v; want %s", in, id, err, want)
		}
	}
	if _, err := identity.ForService("mesh.local", "default", "a.b.c"); err == nil {
		t.Error("a.b.c accepted")
	}
}

// TestServiceNameAndDottedTokens: ServiceName inverts ForService, and a
// join token allows exactly the identities of the names it carries:
// orders.shop is ns/shop/svc/orders and not ns/default/svc/orders, and a
// token for orders does not allow ns/shop/svc/orders.
func TestServiceNameAndDottedTokens(t *testing.T) {
	for _, name := range []string{"orders", "orders.shop", "web.default2"} {
		id, err := identity.ForService("mesh.local", "default", name)
		if err != nil {
			t.Fatal(err)
		}
		if got := id.ServiceName("default"); got != name {
			t.Errorf("ServiceName(ForService(%q)) = %q", name, got)
		}
	}
	shop, _ := identity.NewID("mesh.local", "shop", "orders")
	if got := shop.ServiceName(""); got != "orders.shop" {
		t.Errorf("ServiceName with no default namespace = %q, want orders.shop", got)
	}
	if got := shop.ServiceName("shop"); got != "orders" {
		t.Errorf("ServiceName in its own default namespace = %q, want orders", got)
	}
	now := time.Now()
	claims := func(services ...string) identity.Claims {
		return identity.Claims{ID: "t1", TrustDomain: "mesh.local", Services: services, Expires: now.Add(time.Hour).Unix()}
	}
	def, _ := identity.NewID("mesh.local", "default", "orders")
	if err := claims("orders.shop").Check(shop, "", now); err != nil {
		t.Errorf("a token for orders.shop refused ns/shop/svc/orders: %v", err)
	}
	if err := claims("orders.shop").Check(def, "", now); err == nil || !strings.Contains(err.Error(), "does not allow service orders (it allows orders.shop)") {
		t.Errorf("a token for orders.shop asking for ns/default/svc/orders: %v", err)
	}
	if err := claims("orders").Check(shop, "", now); err == nil || !strings.Contains(err.Error(), "does not allow service orders.shop (it allows orders)") {
		t.Errorf("a token for orders asking for ns/shop/svc/orders: %v", err)
	}
}
