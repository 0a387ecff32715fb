package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// A join token is what an agent or gateway presents, before it has a
// certificate, to be issued one: claims naming the services (and
// optionally the node) it may hold identities for, signed by the control
// plane's token key (Ed25519). Its form is
//
//	mesh1.<base64url(claims JSON)>.<base64url(signature)>
//
// the signature covering "mesh1.<claims>". Tokens are verified by the
// control plane only; an agent treats its token as an opaque secret.

const tokenPrefix = "mesh1."

// MaxTokenBytes bounds a token the control plane reads.
const MaxTokenBytes = 4 << 10

// Claims are what a join token grants.
type Claims struct {
	// ID identifies the token (for revocation and audit logs).
	ID string `json:"jti"`
	// KeyID names the token key that signed it.
	KeyID string `json:"kid"`
	// TrustDomain is the mesh the token belongs to.
	TrustDomain string `json:"td"`
	// Services are the services the holder may get certificates for.
	Services []string `json:"svc"`
	// Node, when set, binds the token to one node name.
	Node string `json:"node,omitempty"`
	// IssuedAt and Expires are Unix seconds.
	IssuedAt int64 `json:"iat"`
	Expires  int64 `json:"exp"`
	// Namespace is the namespace of the identities it grants ("" means
	// DefaultNamespace).
	Namespace string `json:"ns,omitempty"`
	// CAHashes pin the control plane for an agent that has no trust
	// bundle yet: CAFingerprint of each root of the bundle when the token
	// was minted (as kubeadm's discovery-token-ca-cert-hash). The agent
	// dials mesh control over TLS and accepts a server chain ending in one
	// of them, never trust on first use.
	CAHashes []string `json:"ca,omitempty"`
}

// NewTokenID returns a random token ID.
func NewTokenID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SignToken encodes c signed by key.
func SignToken(key ed25519.PrivateKey, c Claims) (string, error) {
	if err := c.validate(); err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode token: %w", err)
	}
	signed := tokenPrefix + base64.RawURLEncoding.EncodeToString(payload)
	sig := ed25519.Sign(key, []byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// ParseToken decodes a token and checks its signature against the key
// keys returns for its key ID (nil: unknown key). It does not check
// expiry or revocation: see Claims.Check.
func ParseToken(tok string, keys func(keyID string) ed25519.PublicKey) (Claims, error) {
	c, signed, sig, err := decodeToken(tok)
	if err != nil {
		return Claims{}, err
	}
	pub := keys(c.KeyID)
	if pub == nil {
		return Claims{}, fmt.Errorf("join token %s: signed by unknown key %q", c.ID, c.KeyID)
	}
	if !ed25519.Verify(pub, []byte(signed), sig) {
		return Claims{}, fmt.Errorf("join token %s: bad signature", c.ID)
	}
	return c, nil
}

// ReadTokenClaims decodes a token's claims WITHOUT checking its signature:
// what an agent, which cannot verify it, reads from its own token (its
// trust domain, namespace and the CA hashes that pin the control plane).
// Nothing read here grants anything; mesh control verifies the token.
func ReadTokenClaims(tok string) (Claims, error) {
	c, _, _, err := decodeToken(tok)
	return c, err
}

// decodeToken splits and decodes a token: its valid claims, the signed
// part and the signature (not checked).
func decodeToken(tok string) (Claims, string, []byte, error) {
	tok = strings.TrimSpace(tok)
	if len(tok) > MaxTokenBytes {
		return Claims{}, "", nil, fmt.Errorf("join token: %d bytes, at most %d", len(tok), MaxTokenBytes)
	}
	if !strings.HasPrefix(tok, tokenPrefix) {
		return Claims{}, "", nil, errors.New("join token: not a mesh join token (want mesh1.<claims>.<signature>)")
	}
	i := strings.LastIndexByte(tok, '.')
	if i <= len(tokenPrefix) {
		return Claims{}, "", nil, errors.New("join token: missing signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(tok[len(tokenPrefix):i])
	if err != nil {
		return Claims{}, "", nil, fmt.Errorf("join token: claims are not base64url: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil || len(sig) != ed25519.SignatureSize {
		return Claims{}, "", nil, errors.New("join token: malformed signature")
	}
	var c Claims
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Claims{}, "", nil, fmt.Errorf("join token: claims: %w", err)
	}
	if err := c.validate(); err != nil {
		return Claims{}, "", nil, fmt.Errorf("join token: %w", err)
	}
	return c, tok[:i], sig, nil
}

func (c Claims) validate() error {
	switch {
	case c.ID == "" || len(c.ID) > 64:
		return errors.New("claims: token id missing or too long")
	case c.KeyID == "" || len(c.KeyID) > 64:
		return errors.New("claims: key id missing or too long")
	case !trustDomainRE.MatchString(c.TrustDomain):
		return fmt.Errorf("claims: trust domain %q is not valid", c.TrustDomain)
	case len(c.Services) == 0 || len(c.Services) > 64:
		return errors.New("claims: a token names 1 to 64 services")
	case c.Expires <= c.IssuedAt:
		return errors.New("claims: expires before it is issued")
	case len(c.Node) > 253:
		return errors.New("claims: node name too long")
	case c.Namespace != "" && !segmentRE.MatchString(c.Namespace):
		return fmt.Errorf("claims: namespace %q is not valid", c.Namespace)
	case len(c.CAHashes) > 16:
		return errors.New("claims: at most 16 CA hashes")
	}
	for _, h := range c.CAHashes {
		if !caHashRE.MatchString(h) {
			return fmt.Errorf("claims: CA hash %q: want sha256:<64 hex digits>", h)
		}
	}
	for _, s := range c.Services {
		if !segmentRE.MatchString(s) {
			return fmt.Errorf("claims: service %q is not a valid name", s)
		}
	}
	return nil
}

var caHashRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// CAFingerprint is how a join token names a root certificate:
// "sha256:" and the hex SHA-256 of its DER.
func CAFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Check says whether the token's holder, on node, may be issued an
// identity for id at now: the trust domain matches, the service is named,
// the node matches when the token is bound to one, and it has not
// expired.
func (c Claims) Check(id ID, node string, now time.Time) error {
	switch {
	case id.TrustDomain != c.TrustDomain:
		return fmt.Errorf("join token %s is for trust domain %s, not %s", c.ID, c.TrustDomain, id.TrustDomain)
	case !slices.Contains(c.Services, id.ServiceName(c.Namespace)):
		return fmt.Errorf("join token %s does not allow service %s (it allows %s)", c.ID, id.ServiceName(c.Namespace), strings.Join(c.Services, ", "))
	case c.Node != "" && c.Node != node:
		return fmt.Errorf("join token %s is bound to node %s, not %q", c.ID, c.Node, node)
	case now.Unix() >= c.Expires:
		return fmt.Errorf("join token %s expired at %s", c.ID, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}
