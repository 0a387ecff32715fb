package ca

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// MintToken signs a join token for services (bound to node when not
// empty), valid for ttl.
func (c *CA) MintToken(services []string, node string, ttl time.Duration) (string, identity.Claims, error) {
	if ttl <= 0 {
		return "", identity.Claims{}, errors.New("token ttl must be positive")
	}
	for _, s := range services {
		if _, err := c.ID(s); err != nil {
			return "", identity.Claims{}, fmt.Errorf("token: %w", err)
		}
		if s == wire.ControlPlaneService {
			return "", identity.Claims{}, fmt.Errorf("token: %w", errReserved)
		}
	}
	now := c.now()
	claims := identity.Claims{
		ID: identity.NewTokenID(), KeyID: c.keyID, TrustDomain: c.cfg.TrustDomain,
		Services: slices.Clone(services), Node: node,
		IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(),
		Namespace: c.cfg.Namespace, CAHashes: c.CAHashes(),
	}
	tok, err := identity.SignToken(c.tokenKey, claims)
	if err != nil {
		return "", identity.Claims{}, err
	}
	return tok, claims, nil
}

// VerifyToken checks a token's signature and that it is not revoked
// (expiry and what it allows: Claims.Check).
func (c *CA) VerifyToken(tok string) (identity.Claims, error) {
	claims, err := identity.ParseToken(tok, func(kid string) ed25519.PublicKey {
		if kid == c.keyID {
			return c.tokenKey.Public().(ed25519.PublicKey)
		}
		return nil
	})
	if err != nil {
		return identity.Claims{}, err
	}
	revoked, err := c.revokedSet()
	if err != nil {
		return identity.Claims{}, err
	}
	if revoked[claims.ID] {
		return identity.Claims{}, fmt.Errorf("join token %s is revoked", claims.ID)
	}
	return claims, nil
}

// Revoke adds a token ID to the revoked file (shared by the control
// planes that share the CA directory). Certificates already issued stay
// valid until they expire; their renewals need no token.
func (c *CA) Revoke(id string) error {
	id = sanitize(id)
	if id == "" || strings.ContainsAny(id, " \t\r\n") || len(id) > 64 {
		return fmt.Errorf("revoke: %q is not a token id", id)
	}
	c.revokedMu.Lock()
	defer c.revokedMu.Unlock()
	f, err := os.OpenFile(c.path(revokedName), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("revoke %s: %w", id, err)
	}
	if _, err := fmt.Fprintln(f, id); err != nil {
		f.Close()
		return fmt.Errorf("revoke %s: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("revoke %s: %w", id, err)
	}
	c.revokedMtime = time.Time{} // re-read at the next check
	return nil
}

// revokedSet returns the revoked token IDs, re-reading the file when it
// changed (another control plane, or Ansible, may have updated it).
func (c *CA) revokedSet() (map[string]bool, error) {
	c.revokedMu.Lock()
	defer c.revokedMu.Unlock()
	path := c.path(revokedName)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		c.revoked = map[string]bool{}
		return c.revoked, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revoked tokens: %w", err)
	}
	if c.revoked != nil && fi.ModTime().Equal(c.revokedMtime) {
		return c.revoked, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read revoked tokens: %w", err)
	}
	set := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if id := sanitize(sc.Text()); id != "" && !strings.HasPrefix(id, "#") {
			set[id] = true
		}
	}
	c.revoked, c.revokedMtime = set, fi.ModTime()
	return set, nil
}
