package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The edge part of the demo: `mesh gateway` in front of orders, with
// routes and JWT authentication in mesh control's file.
const (
	gatewayIP   = "127.0.0.20"
	gatewayHost = "shop.localhost"
	demoIssuer  = "https://idp.demo"
)

// edge is the demo's identity provider (a key it signs tokens with) and
// the gateway's certificate.
type edge struct {
	key    *rsa.PrivateKey
	jwks   string
	cert   string
	keyPEM string
	pool   *x509.CertPool
	client *http.Client
}

func newEdge(dir string) (*edge, error) {
	e := &edge{jwks: filepath.Join(dir, "jwks.json"), cert: filepath.Join(dir, "shop.crt"), keyPEM: filepath.Join(dir, "shop.key")}
	var err error
	if e.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &e.key.PublicKey, KeyID: "demo-1", Algorithm: "RS256", Use: "sig"}}}
	b, _ := json.Marshal(set)
	if err := os.WriteFile(e.jwks, b, 0o644); err != nil {
		return nil, err
	}
	ck, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: gatewayHost}, DNSNames: []string{gatewayHost},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ck.PublicKey, ck)
	if err != nil {
		return nil, err
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(ck)
	if err := os.WriteFile(e.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.keyPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	c, _ := x509.ParseCertificate(der)
	e.pool = x509.NewCertPool()
	e.pool.AddCert(c)
	e.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64,
		TLSClientConfig: &tls.Config{RootCAs: e.pool, ServerName: gatewayHost}}}
	return e, nil
}

// controlGateway is the control.gateway section: who signs tokens, which
// claim becomes which header, and the route.
func (e *edge) controlGateway() string {
	return fmt.Sprintf(`  gateway:
    jwt_providers:
      - {name: demo-idp, issuer: %s, audiences: [shop], jwks_file: %s, claims_to_headers: {sub: x-user-id}}
    routes:
      - {host: %s, path_prefix: /api/orders, service: orders, auth: {jwt: demo-idp, claims: {scope: "orders:read"}}, timeout: 2s}
`, demoIssuer, e.jwks, gatewayHost)
}

// gatewayConfig is the gateway's own file: its certificate and a small
// per-client-IP rate limit for the burst.
func (e *edge) gatewayConfig() string {
	return fmt.Sprintf(`gateway:
  tls:
    certificates: [{cert_file: %s, key_file: %s}]
  limits:
    per_ip: {max_tokens: 10, tokens_per_fill: 5, fill_interval: 1s}
`, e.cert, e.keyPEM)
}

func (e *edge) token(sub string) string {
	sig, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: e.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "demo-1"))
	now := time.Now()
	s, _ := jwt.Signed(sig).Claims(jwt.Claims{Issuer: demoIssuer, Subject: sub, Audience: jwt.Audience{"shop"},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now)}).
		Claims(map[string]any{"scope": "orders:read"}).Serialize()
	return s
}

type edgeResult struct {
	status int
	reason string
	auth   string
	retry  string
	userID string
	inst   string
	err    error
}

func (e *edge) get(ctx context.Context, hdr map[string]string) edgeResult {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+gatewayIP+":8443/api/orders/42", nil)
	req.Host = gatewayHost
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return edgeResult{err: err}
	}
	defer resp.Body.Close()
	var body struct {
		Instance string `json:"instance"`
		UserID   string `json:"x_user_id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return edgeResult{status: resp.StatusCode, reason: resp.Header.Get("x-mesh-reason"), auth: resp.Header.Get("WWW-Authenticate"),
		retry: resp.Header.Get("Retry-After"), userID: body.UserID, inst: body.Instance}
}

// show runs the edge phase: refused without a token, accepted with one
// (the user id reaches the app; a forged one does not), a burst cut off.
func (e *edge) show(ctx context.Context) {
	line := func(what string, r edgeResult) {
		if r.err != nil {
			fmt.Printf("  %-44s error: %v\n", what, r.err)
			return
		}
		fmt.Printf("  %-44s %d", what, r.status)
		if r.reason != "" {
			fmt.Printf(" x-mesh-reason=%s", r.reason)
		}
		if r.auth != "" {
			fmt.Printf(" WWW-Authenticate=%q", r.auth)
		}
		if r.status == 200 {
			fmt.Printf(" answered by %s, which saw x-user-id=%q", r.inst, r.userID)
		}
		fmt.Println()
	}
	time.Sleep(1500 * time.Millisecond) // orders' own rate limit refills after the burst above
	line("no token", e.get(ctx, nil))
	line("forged x-user-id, no token", e.get(ctx, map[string]string{"X-User-Id": "admin"}))
	line("token signed for alice", e.get(ctx, map[string]string{"Authorization": "Bearer " + e.token("alice")}))
	line("token for alice + forged x-user-id: admin", e.get(ctx, map[string]string{"Authorization": "Bearer " + e.token("alice"), "X-User-Id": "admin"}))
	time.Sleep(2 * time.Second) // let the client's bucket refill
	fmt.Println("  a burst of 40 requests at once from one client (per-IP limit: 10, then 5/s):")
	tok := e.token("alice")
	var mu sync.Mutex
	counts := map[string]int{}
	retry := ""
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.get(ctx, map[string]string{"Authorization": "Bearer " + tok})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.err != nil:
				counts["error"]++
			case r.reason != "":
				counts[fmt.Sprintf("%d %s", r.status, r.reason)]++
				if r.retry != "" {
					retry = r.retry
				}
			default:
				counts[fmt.Sprint(r.status)]++
			}
		}()
	}
	wg.Wait()
	for k, v := range counts {
		fmt.Printf("    %-28s %d\n", k, v)
	}
	if retry != "" {
		fmt.Printf("    refused ones carry Retry-After: %ss\n", retry)
	}
}
