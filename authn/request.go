package authn

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Source is where a request carries its token: a header (with a prefix
// such as "Bearer ") or a cookie.
type Source struct {
	Header string
	Prefix string
	Cookie string
}

// DefaultSources: the Authorization header with the Bearer scheme.
var DefaultSources = []Source{{Header: "Authorization", Prefix: "Bearer "}}

// TokenFrom returns the first token found in r's sources ("" if none).
func TokenFrom(r *http.Request, sources []Source) string {
	for _, s := range sources {
		switch {
		case s.Header != "":
			v := r.Header.Get(s.Header)
			if v == "" {
				continue
			}
			if s.Prefix != "" {
				if len(v) < len(s.Prefix) || !strings.EqualFold(v[:len(s.Prefix)], s.Prefix) {
					continue
				}
				v = v[len(s.Prefix):]
			}
			if v = strings.TrimSpace(v); v != "" {
				return v
			}
		case s.Cookie != "":
			if c, err := r.Cookie(s.Cookie); err == nil && c.Value != "" {
				return c.Value
			}
		}
	}
	return ""
}

// Rule requires a claim to hold a value: equal to it, or containing it
// when the claim is a list or a space-separated string (OAuth scope).
type Rule struct {
	Claim    string
	Contains string
}

// Allow checks every rule; the first that fails is ErrForbidden naming it.
func (c *Claims) Allow(rules []Rule) error {
	for _, r := range rules {
		if !c.has(r.Claim, r.Contains) {
			return fmt.Errorf("%w: claim %s does not contain %q", ErrForbidden, r.Claim, r.Contains)
		}
	}
	return nil
}

func (c *Claims) has(claim, want string) bool {
	switch v := c.All[claim].(type) {
	case string:
		return v == want || slices.Contains(strings.Fields(v), want)
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok && s == want {
				return true
			}
		}
	case bool:
		return strconv.FormatBool(v) == want
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64) == want
	}
	return false
}

// Value renders a claim for a header: a string as it is, a number or
// boolean in JSON form, a list of strings joined with ","; "" when the
// claim is absent or an object. Control characters are dropped, so a
// claim cannot split a header.
func (c *Claims) Value(claim string) string {
	var s string
	switch v := c.All[claim].(type) {
	case string:
		s = v
	case float64:
		s = strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		s = strconv.FormatBool(v)
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			if es, ok := e.(string); ok {
				parts = append(parts, es)
			}
		}
		s = strings.Join(parts, ",")
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// APIKey is one accepted API key, stored hashed: Hash is
// "sha256:<hex>" of the key (HashAPIKey), Subject whom it stands for.
type APIKey struct {
	Subject string
	Hash    string
}

// HashAPIKey is the stored form of key.
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// APIKeys verifies API keys against their hashes.
type APIKeys struct {
	byHash map[[32]byte]string
}

// NewAPIKeys checks the stored keys.
func NewAPIKeys(keys []APIKey) (*APIKeys, error) {
	a := &APIKeys{byHash: make(map[[32]byte]string, len(keys))}
	for i, k := range keys {
		hexSum, ok := strings.CutPrefix(k.Hash, "sha256:")
		var sum [32]byte
		if n, err := hex.Decode(sum[:], []byte(hexSum)); !ok || err != nil || n != 32 {
			return nil, fmt.Errorf("api key %d (%s): hash must be sha256:<64 hex digits> (see mesh gateway hash-key)", i, k.Subject)
		}
		if k.Subject == "" {
			return nil, fmt.Errorf("api key %d: subject is required", i)
		}
		if _, dup := a.byHash[sum]; dup {
			return nil, fmt.Errorf("api key %d (%s): the same key is listed twice", i, k.Subject)
		}
		a.byHash[sum] = k.Subject
	}
	return a, nil
}

// Verify returns the subject of key. Only the key's hash is compared, so
// the time taken says nothing about how much of a key matched.
func (a *APIKeys) Verify(key string) (string, error) {
	if key == "" {
		return "", ErrNoToken
	}
	sub, ok := a.byHash[sha256.Sum256([]byte(key))]
	if !ok {
		return "", fmt.Errorf("%w: unknown api key", ErrInvalidToken)
	}
	return sub, nil
}
