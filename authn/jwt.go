// Package authn verifies the credentials the edge accepts, once, before a
// request enters the mesh: JWTs signed by an identity provider (RS256,
// ES256, EdDSA and their kin, keys from a JWKS file or URL, refreshed in
// the background) and API keys stored hashed. It knows nothing of routing
// or HTTP servers; the gateway calls it per request, tests and benchmarks
// drive it directly.
package authn

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ProviderConfig is one identity provider.
type ProviderConfig struct {
	Name string
	// Issuer must equal the token's iss; Audiences, when set, must
	// intersect its aud.
	Issuer    string
	Audiences []string
	// JWKSFile or JWKSURL (one of them) holds the provider's keys; or
	// JWKS holds them inline (what a control plane pushed, as Envoy's
	// local_jwks inline_string), and they never change.
	JWKSFile string
	JWKSURL  string
	JWKS     []byte
	// Refresh is how often the keys are re-read (default 5m); a token
	// with an unknown kid triggers an early refresh, at most every
	// MinRefresh (default 30s).
	Refresh    time.Duration
	MinRefresh time.Duration
	// ClockSkew is tolerated on exp, nbf and iat (default 30s).
	ClockSkew time.Duration
	// Algorithms accepted (default RS256/384/512, PS256/384/512,
	// ES256/384/512, EdDSA). HS* and none are never accepted: a public key
	// is not a shared secret.
	Algorithms []string
}

// Errors, for the edge to map onto 401 (with WWW-Authenticate) or 403.
var (
	// ErrNoToken: the request carries no token.
	ErrNoToken = errors.New("no token")
	// ErrInvalidToken wraps every reason a token is not accepted.
	ErrInvalidToken = errors.New("invalid token")
	// ErrForbidden: a valid token whose claims a rule does not allow.
	ErrForbidden = errors.New("claims not allowed")
)

var defaultAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// Claims are a verified token's claims.
type Claims struct {
	Subject  string
	Issuer   string
	Audience []string
	Expiry   time.Time
	// All holds every claim as decoded JSON.
	All map[string]any
}

// Provider verifies tokens of one identity provider.
type Provider struct {
	cfg    ProviderConfig
	algs   []jose.SignatureAlgorithm
	client *http.Client
	now    func() time.Time

	keys      atomic.Pointer[jose.JSONWebKeySet]
	refreshMu sync.Mutex
	lastLoad  atomic.Int64 // unix nanos of the last load attempt
	kick      chan struct{}
	lastErr   atomic.Pointer[error]

	cache *tokenCache
}

// NewProvider checks cfg and returns a provider holding no keys yet: Load
// (or Run) reads them. client may be nil for a default with a 10s timeout;
// now may be nil for time.Now.
func NewProvider(cfg ProviderConfig, client *http.Client, now func() time.Time) (*Provider, error) {
	if cfg.Issuer == "" {
		return nil, fmt.Errorf("jwt provider %s: issuer is required", cfg.Name)
	}
	if n := btoi(cfg.JWKSFile != "") + btoi(cfg.JWKSURL != "") + btoi(len(cfg.JWKS) > 0); n != 1 {
		return nil, fmt.Errorf("jwt provider %s: set exactly one of jwks_file and jwks_url", cfg.Name)
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = defaultAlgorithms
	}
	p := &Provider{cfg: cfg, client: client, now: now, kick: make(chan struct{}, 1), cache: newTokenCache(10000)}
	for _, a := range cfg.Algorithms {
		if !slices.Contains(defaultAlgorithms, a) {
			return nil, fmt.Errorf("jwt provider %s: algorithm %q not accepted (want one of %s)", cfg.Name, a, strings.Join(defaultAlgorithms, ", "))
		}
		p.algs = append(p.algs, jose.SignatureAlgorithm(a))
	}
	if p.cfg.Refresh <= 0 {
		p.cfg.Refresh = 5 * time.Minute
	}
	if p.cfg.MinRefresh <= 0 {
		p.cfg.MinRefresh = 30 * time.Second
	}
	if p.cfg.ClockSkew <= 0 {
		p.cfg.ClockSkew = 30 * time.Second
	}
	if p.client == nil {
		p.client = &http.Client{Timeout: 10 * time.Second}
	}
	if p.now == nil {
		p.now = time.Now
	}
	return p, nil
}

// Name is the provider's name.
func (p *Provider) Name() string { return p.cfg.Name }

// Verify checks a compact JWS token: an accepted algorithm, a key from the
// JWKS by kid (or the only key when the token names none), the signature,
// iss, aud, exp (required), nbf and iat with the clock skew. Tokens already
// verified are answered from a bounded cache until they expire.
func (p *Provider) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	now := p.now()
	sum := sha256.Sum256([]byte(token))
	if c, ok := p.cache.get(sum, now); ok {
		return c, nil
	}
	tok, err := jwt.ParseSigned(token, p.algs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: %d signatures, want 1", ErrInvalidToken, len(tok.Headers))
	}
	kid := tok.Headers[0].KeyID
	key, err := p.key(ctx, kid)
	if err != nil {
		return nil, err
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(key, &std, &all); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if std.Expiry == nil {
		return nil, fmt.Errorf("%w: no exp claim", ErrInvalidToken)
	}
	exp := jwt.Expected{Issuer: p.cfg.Issuer, AnyAudience: p.cfg.Audiences, Time: now}
	if err := std.ValidateWithLeeway(exp, p.cfg.ClockSkew); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	c := &Claims{Subject: std.Subject, Issuer: std.Issuer, Audience: std.Audience, Expiry: std.Expiry.Time(), All: all}
	p.cache.put(sum, c, c.Expiry.Add(p.cfg.ClockSkew))
	return c, nil
}

// key finds the verification key for kid, refreshing the keys once early
// when it is unknown (a provider that rotated).
func (p *Provider) key(ctx context.Context, kid string) (any, error) {
	if k, ok := p.lookup(kid); ok {
		return k, nil
	}
	if p.keys.Load() == nil || p.refreshDue() {
		_ = p.Load(ctx) // a failure keeps the last good keys
		if k, ok := p.lookup(kid); ok {
			return k, nil
		}
	}
	if p.keys.Load() == nil {
		return nil, fmt.Errorf("%w: provider %s has no keys yet", ErrInvalidToken, p.cfg.Name)
	}
	return nil, fmt.Errorf("%w: unknown key id %q", ErrInvalidToken, kid)
}

func (p *Provider) lookup(kid string) (any, bool) {
	set := p.keys.Load()
	if set == nil {
		return nil, false
	}
	if kid == "" {
		if len(set.Keys) == 1 && set.Keys[0].Use != "enc" {
			return set.Keys[0].Key, true
		}
		return nil, false
	}
	for _, k := range set.Key(kid) {
		if k.Use == "" || k.Use == "sig" {
			return k.Key, true
		}
	}
	return nil, false
}

func (p *Provider) refreshDue() bool {
	last := p.lastLoad.Load()
	return last == 0 || p.now().Sub(time.Unix(0, last)) >= p.cfg.MinRefresh
}

// Load reads the JWKS now. A failure (unreadable, not a JWKS, no usable
// key) keeps the keys already held and is returned.
func (p *Provider) Load(ctx context.Context) error {
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	p.lastLoad.Store(p.now().UnixNano())
	set, err := p.fetch(ctx)
	if err != nil {
		err = fmt.Errorf("jwt provider %s: load keys: %w", p.cfg.Name, err)
		p.lastErr.Store(&err)
		return err
	}
	p.keys.Store(set)
	p.lastErr.Store(nil)
	return nil
}

// Err is the last key load's error (nil after a good load).
func (p *Provider) Err() error {
	if e := p.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// Run loads the keys and reloads them every Refresh until ctx is done.
func (p *Provider) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Refresh)
	defer t.Stop()
	_ = p.Load(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = p.Load(ctx)
		}
	}
}

const maxJWKSBytes = 1 << 20

func (p *Provider) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	var data []byte
	var err error
	switch {
	case len(p.cfg.JWKS) > 0:
		data = p.cfg.JWKS
	case p.cfg.JWKSFile != "":
		data, err = readFileLimited(p.cfg.JWKSFile, maxJWKSBytes)
	default:
		data, err = p.get(ctx)
	}
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS: %w", err)
	}
	usable := set.Keys[:0]
	for _, k := range set.Keys {
		if k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") {
			usable = append(usable, k)
		}
	}
	if len(usable) == 0 {
		return nil, errors.New("no usable public signing key in the JWKS")
	}
	set.Keys = usable
	return &set, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
