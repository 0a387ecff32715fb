package authn_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshvm/mesh/authn"
)

const issuer = "https://idp.example"

type signingKey struct {
	kid string
	alg jose.SignatureAlgorithm
	key crypto.Signer
}

func newKeys(t testing.TB) []signingKey {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	return []signingKey{{"rsa-1", jose.RS256, rsaKey}, {"ec-1", jose.ES256, ecKey}, {"ed-1", jose.EdDSA, edKey}}
}

func jwks(keys ...signingKey) []byte {
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.key.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, _ := json.Marshal(set)
	return b
}

func sign(t testing.TB, k signingKey, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func claims(now time.Time, extra map[string]any) map[string]any {
	c := map[string]any{"iss": issuer, "aud": []string{"shop"}, "sub": "user-42",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "scope": "orders:read profile"}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func fileProvider(t testing.TB, data []byte, now func() time.Time) (*authn.Provider, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := authn.NewProvider(authn.ProviderConfig{Name: "idp", Issuer: issuer, Audiences: []string{"shop"}, JWKSFile: path}, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, path
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestVerify(t *testing.T) {
	keys := newKeys(t)
	now := time.Now()
	p, _ := fileProvider(t, jwks(keys...), func() time.Time { return now })
	ctx := context.Background()
	for _, k := range keys {
		t.Run("valid "+string(k.alg), func(t *testing.T) {
			c, err := p.Verify(ctx, sign(t, k, claims(now, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject != "user-42" || c.Value("scope") != "orders:read profile" {
				t.Fatalf("claims %+v", c)
			}
		})
	}
	rsaKey := keys[0]
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	valid := sign(t, rsaKey, claims(now, nil))
	parts := strings.Split(valid, ".")
	tamperedPayload := parts[0] + "." + b64(claims(now, map[string]any{"sub": "admin"})) + "." + parts[2]
	sig := []byte(parts[2])
	sig[10] ^= 1
	tamperedSig := parts[0] + "." + parts[1] + "." + string(sig)
	none := b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(claims(now, nil)) + "."
	// alg confusion: HS256 with the RSA public key (as a verifier might
	// hold it) used as the shared secret.
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(rsaKey.key.Public()))})
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubPEM}, (&jose.SignerOptions{}).WithHeader("kid", "rsa-1"))
	confused, _ := jwt.Signed(hs).Claims(claims(now, nil)).Serialize()
	for _, c := range []struct {
		name, token, want string
	}{
		{"expired", sign(t, rsaKey, claims(now, map[string]any{"exp": now.Add(-time.Minute).Unix()})), "expired"},
		{"expired within the skew", "", ""},
		{"not yet valid", sign(t, rsaKey, claims(now, map[string]any{"nbf": now.Add(time.Hour).Unix()})), "not valid yet"},
		{"wrong issuer", sign(t, rsaKey, claims(now, map[string]any{"iss": "https://evil.example"})), "issuer"},
		{"wrong audience", sign(t, rsaKey, claims(now, map[string]any{"aud": "other"})), "audience"},
		{"no exp", sign(t, rsaKey, map[string]any{"iss": issuer, "aud": "shop", "sub": "x"}), "no exp"},
		{"unknown kid", sign(t, signingKey{"rsa-9", jose.RS256, otherRSA}, claims(now, nil)), `unknown key id "rsa-9"`},
		{"signed by another key under a known kid", sign(t, signingKey{"rsa-1", jose.RS256, otherRSA}, claims(now, nil)), "invalid token"},
		{"alg none", none, "invalid token"},
		{"alg confusion HS256", confused, "invalid token"},
		{"tampered payload", tamperedPayload, "invalid token"},
		{"tampered signature", tamperedSig, "invalid token"},
		{"garbage", "not.a.jwt", "invalid token"},
	} {
		if c.token == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Verify(ctx, c.token)
			if !errors.Is(err, authn.ErrInvalidToken) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Verify = %v, want ErrInvalidToken containing %q", err, c.want)
			}
		})
	}
	t.Run("expired within the clock skew", func(t *testing.T) {
		if _, err := p.Verify(ctx, sign(t, rsaKey, claims(now, map[string]any{"exp": now.Add(-10 * time.Second).Unix()}))); err != nil {
			t.Fatalf("a token expired 10s ago (skew 30s): %v", err)
		}
	})
	if _, err := p.Verify(ctx, ""); !errors.Is(err, authn.ErrNoToken) {
		t.Fatalf("empty token: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestJWKSRefresh serves the JWKS over HTTP on loopback: a token signed by
// a rotated-in key triggers an early refresh and verifies; with the
// endpoint down, the last good keys keep verifying.
func TestJWKSRefresh(t *testing.T) {
	keys := newKeys(t)
	var body atomic.Value
	body.Store(jwks(keys[0]))
	var down atomic.Bool
	var hits atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(body.Load().([]byte))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	now := time.Now()
	clock := func() time.Time { return now }
	p, err := authn.NewProvider(authn.ProviderConfig{Name: "idp", Issuer: issuer, JWKSURL: "http://" + ln.Addr().String() + "/jwks", MinRefresh: time.Second}, nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Verify(ctx, sign(t, keys[0], claims(now, nil))); err != nil {
		t.Fatal(err)
	}
	// The provider rotates to the EC key.
	body.Store(jwks(keys[0], keys[1]))
	now = now.Add(2 * time.Second) // past MinRefresh
	if _, err := p.Verify(ctx, sign(t, keys[1], claims(now, nil))); err != nil {
		t.Fatalf("token from a rotated-in key: %v", err)
	}
	// Unknown kids do not hammer the provider: one refresh per MinRefresh.
	before := hits.Load()
	for i := 0; i < 20; i++ {
		_, _ = p.Verify(ctx, sign(t, signingKey{"nope", jose.EdDSA, keys[2].key}, claims(now, map[string]any{"n": i})))
	}
	if n := hits.Load() - before; n > 1 {
		t.Fatalf("20 unknown-kid tokens caused %d JWKS fetches, want at most 1", n)
	}
	down.Store(true)
	if err := p.Load(ctx); err == nil {
		t.Fatal("load from a down endpoint succeeded")
	}
	if p.Err() == nil {
		t.Fatal("the failed refresh is not reported")
	}
	if _, err := p.Verify(ctx, sign(t, keys[1], claims(now, map[string]any{"n": "fresh"}))); err != nil {
		t.Fatalf("with the JWKS endpoint down, the last good keys must still verify: %v", err)
	}
	body.Store([]byte(`{"keys": []}`))
	down.Store(false)
	if err := p.Load(ctx); err == nil || !strings.Contains(err.Error(), "no usable public signing key") {
		t.Fatalf("an empty JWKS: %v", err)
	}
	if _, err := p.Verify(ctx, sign(t, keys[0], claims(now, map[string]any{"n": "again"}))); err != nil {
		t.Fatalf("an empty JWKS must not replace the good keys: %v", err)
	}
}

func TestRulesHeadersSources(t *testing.T) {
	keys := newKeys(t)
	now := time.Now()
	p, _ := fileProvider(t, jwks(keys...), func() time.Time { return now })
	tok := sign(t, keys[1], claims(now, map[string]any{"roles": []string{"admin", "ops"}, "name": "Eve\r\nX-Injected: 1"}))
	c, err := p.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Allow([]authn.Rule{{Claim: "scope", Contains: "orders:read"}, {Claim: "roles", Contains: "admin"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Allow([]authn.Rule{{Claim: "scope", Contains: "orders:write"}}); !errors.Is(err, authn.ErrForbidden) {
		t.Fatalf("missing scope: %v", err)
	}
	if err := c.Allow([]authn.Rule{{Claim: "scope", Contains: "orders"}}); !errors.Is(err, authn.ErrForbidden) {
		t.Fatalf("a scope prefix is not the scope: %v", err)
	}
	if v := c.Value("roles"); v != "admin,ops" {
		t.Fatalf("roles header %q", v)
	}
	if v := c.Value("name"); strings.ContainsAny(v, "\r\n") {
		t.Fatalf("a claim split a header: %q", v)
	}
	r, _ := http.NewRequest(http.MethodGet, "http://shop/", nil)
	r.Header.Set("Authorization", "bearer "+tok)
	if got := authn.TokenFrom(r, authn.DefaultSources); got != tok {
		t.Fatalf("token from Authorization: %q", got)
	}
	r2, _ := http.NewRequest(http.MethodGet, "http://shop/", nil)
	r2.AddCookie(&http.Cookie{Name: "session", Value: tok})
	if got := authn.TokenFrom(r2, []authn.Source{{Header: "Authorization", Prefix: "Bearer "}, {Cookie: "session"}}); got != tok {
		t.Fatalf("token from cookie: %q", got)
	}
	r3, _ := http.NewRequest(http.MethodGet, "http://shop/", nil)
	r3.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	if got := authn.TokenFrom(r3, authn.DefaultSources); got != "" {
		t.Fatalf("Basic credentials taken as a bearer token: %q", got)
	}
}

func TestAPIKeys(t *testing.T) {
	keys, err := authn.NewAPIKeys([]authn.APIKey{{Subject: "partner-a", Hash: authn.HashAPIKey("s3cret-a")}})
	if err != nil {
		t.Fatal(err)
	}
	if sub, err := keys.Verify("s3cret-a"); err != nil || sub != "partner-a" {
		t.Fatalf("Verify: %q %v", sub, err)
	}
	if _, err := keys.Verify("s3cret-b"); !errors.Is(err, authn.ErrInvalidToken) {
		t.Fatalf("wrong key: %v", err)
	}
	for _, bad := range []authn.APIKey{{Subject: "x", Hash: "s3cret"}, {Subject: "x", Hash: "sha256:zz"}, {Hash: authn.HashAPIKey("k")}} {
		if _, err := authn.NewAPIKeys([]authn.APIKey{bad}); err == nil {
			t.Fatalf("accepted %+v", bad)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	keys := newKeys(b)
	now := time.Now()
	p, _ := fileProvider(b, jwks(keys...), func() time.Time { return now })
	ctx := context.Background()
	for _, k := range keys {
		tok := sign(b, k, claims(now, nil))
		b.Run(string(k.alg)+"/cached", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(k.alg)+"/uncached", func(b *testing.B) {
			toks := make([]string, 64)
			for i := range toks {
				toks[i] = sign(b, k, claims(now, map[string]any{"n": i}))
			}
			fresh, _ := fileProvider(b, jwks(keys...), func() time.Time { return now })
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// A new provider every 64 tokens keeps the cache out of it.
				if i%len(toks) == 0 {
					b.StopTimer()
					fresh, _ = fileProvider(b, jwks(keys...), func() time.Time { return now })
					b.StartTimer()
				}
				if _, err := fresh.Verify(ctx, toks[i%len(toks)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestTokenFromNamedHeader: a provider's own header, with or without a
// scheme prefix, is read; the Authorization header is not read when only
// the named header is configured.
func TestTokenFromNamedHeader(t *testing.T) {
	for _, c := range []struct {
		name    string
		sources []authn.Source
		hdr     map[string]string
		want    string
	}{
		{name: "named header without prefix", sources: []authn.Source{{Header: "X-Partner-Token"}},
			hdr: map[string]string{"X-Partner-Token": "tok-1"}, want: "tok-1"},
		{name: "named header with its prefix", sources: []authn.Source{{Header: "X-Partner-Token", Prefix: "Token "}},
			hdr: map[string]string{"X-Partner-Token": "Token tok-2"}, want: "tok-2"},
		{name: "named header missing its prefix", sources: []authn.Source{{Header: "X-Partner-Token", Prefix: "Token "}},
			hdr: map[string]string{"X-Partner-Token": "tok-3"}, want: ""},
		{name: "only the named header is read", sources: []authn.Source{{Header: "X-Partner-Token"}},
			hdr: map[string]string{"Authorization": "Bearer tok-4"}, want: ""},
		{name: "first source that carries one", sources: []authn.Source{{Header: "X-Partner-Token"}, {Header: "Authorization", Prefix: "Bearer "}},
			hdr: map[string]string{"Authorization": "Bearer tok-5"}, want: "tok-5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://shop/", nil)
			for k, v := range c.hdr {
				r.Header.Set(k, v)
			}
			if got := authn.TokenFrom(r, c.sources); got != c.want {
				t.Fatalf("TokenFrom = %q, want %q", got, c.want)
			}
		})
	}
}

// TestJWKSBackgroundRefresh: Run re-reads a JWKS URL every Refresh on its
// own, so a key the provider adds verifies without any early refresh (the
// token's kid is tried first with the keys already held), and a refresh
// that fails keeps the last good keys.
func TestJWKSBackgroundRefresh(t *testing.T) {
	keys := newKeys(t)
	var body atomic.Value
	body.Store(jwks(keys[0]))
	var down atomic.Bool
	var hits atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(body.Load().([]byte))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	// MinRefresh far away: only the background loop may fetch.
	p, err := authn.NewProvider(authn.ProviderConfig{Name: "idp", Issuer: issuer, JWKSURL: "http://" + ln.Addr().String() + "/jwks",
		Refresh: 100 * time.Millisecond, MinRefresh: time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	now := time.Now()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("first load", func() bool { _, err := p.Verify(ctx, sign(t, keys[0], claims(now, nil))); return err == nil })
	body.Store(jwks(keys[0], keys[2]))
	before := hits.Load()
	waitFor("two background refreshes", func() bool { return hits.Load() >= before+2 })
	if _, err := p.Verify(ctx, sign(t, keys[2], claims(now, nil))); err != nil {
		t.Fatalf("a key added to the JWKS is not picked up by the background refresh: %v", err)
	}
	down.Store(true)
	before = hits.Load()
	waitFor("a failed background refresh", func() bool { return hits.Load() >= before+2 && p.Err() != nil })
	if _, err := p.Verify(ctx, sign(t, keys[2], claims(now, map[string]any{"n": "down"}))); err != nil {
		t.Fatalf("with the JWKS endpoint down, the last good keys must still verify: %v", err)
	}
	down.Store(false)
	waitFor("recovery", func() bool { return p.Err() == nil })
}
