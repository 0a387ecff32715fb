// Package consulacl verifies a Consul ACL token that a workload presents
// to mesh control instead of a join token: Consul must know the token
// (its own /v1/acl/token/self answers for it), and Consul itself decides
// whether it grants service:write on the service the workload asks to be
// (/v1/internal/acl/authorize, the check Consul's UI uses), so policies,
// roles, service identities, prefix rules and the default policy mean
// exactly what they mean in Consul — as Consul Connect signs a sidecar's
// leaf certificate only for a token with service:write on its service.
package consulacl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Config is how mesh control reaches Consul (config.Consul's address and
// datacenter); its own token is never used to judge a workload's.
type Config struct {
	// Addr is host:port, optionally with an http:// or https:// prefix.
	Addr       string
	Datacenter string
	// Timeout bounds each question to Consul (default 10s).
	Timeout time.Duration
}

// Verifier asks Consul about presented tokens.
type Verifier struct {
	client  *api.Client
	http    *http.Client
	base    string
	dc      string
	timeout time.Duration
}

// New prepares a Verifier; it dials nothing.
func New(cfg Config) (*Verifier, error) {
	c := api.DefaultConfig()
	addr := cfg.Addr
	switch {
	case strings.HasPrefix(addr, "https://"):
		c.Scheme, addr = "https", strings.TrimPrefix(addr, "https://")
	case strings.HasPrefix(addr, "http://"):
		c.Scheme, addr = "http", strings.TrimPrefix(addr, "http://")
	}
	if addr != "" {
		c.Address = addr
	}
	c.Token = "" // each question carries the presented token, never ours
	c.Datacenter = cfg.Datacenter
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Addr, err)
	}
	t := cfg.Timeout
	if t <= 0 {
		t = 10 * time.Second
	}
	return &Verifier{client: client, http: c.HttpClient, base: c.Scheme + "://" + c.Address, dc: cfg.Datacenter, timeout: t}, nil
}

// Token is a token Consul knows.
type Token struct {
	// AccessorID names the token in logs and errors (the secret never).
	AccessorID  string
	Description string
	secret      string
	v           *Verifier
}

// String names t for errors and logs.
func (t Token) String() string { return "Consul ACL token " + t.AccessorID }

// ErrRefused wraps a token Consul does not accept (unknown, deleted,
// expired), as opposed to Consul being unreachable.
var ErrRefused = errors.New("refused by Consul")

// Lookup asks Consul for the token with secret.
func (v *Verifier) Lookup(ctx context.Context, secret string) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	tok, _, err := v.client.ACL().TokenReadSelf((&api.QueryOptions{Token: secret}).WithContext(ctx))
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && (se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized || se.Code == http.StatusNotFound) {
			return Token{}, fmt.Errorf("consul acl token: %w (%s)", ErrRefused, strings.TrimSpace(se.Body))
		}
		return Token{}, fmt.Errorf("consul acl token: ask Consul at %s: %w", v.base, err)
	}
	if tok.ExpirationTime != nil && !tok.ExpirationTime.After(time.Now()) {
		return Token{}, fmt.Errorf("consul acl token %s: %w (expired at %s)", tok.AccessorID, ErrRefused, tok.ExpirationTime.UTC().Format(time.RFC3339))
	}
	return Token{AccessorID: tok.AccessorID, Description: tok.Description, secret: secret, v: v}, nil
}

type authzRequest struct {
	Resource string `json:"Resource"`
	Segment  string `json:"Segment"`
	Access   string `json:"Access"`
}

type authzResponse struct {
	authzRequest
	Allow bool `json:"Allow"`
}

// AllowsServiceWrite reports whether Consul grants t service:write on
// service.
func (t Token) AllowsServiceWrite(ctx context.Context, service string) (bool, error) {
	if t.v == nil {
		return false, errors.New("consul acl token: not looked up")
	}
	ctx, cancel := context.WithTimeout(ctx, t.v.timeout)
	defer cancel()
	body, _ := json.Marshal([]authzRequest{{Resource: "service", Segment: service, Access: "write"}})
	u := t.v.base + "/v1/internal/acl/authorize"
	if t.v.dc != "" {
		u += "?dc=" + url.QueryEscape(t.v.dc)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("consul acl authorize: %w", err)
	}
	req.Header.Set("X-Consul-Token", t.secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.v.http.Do(req)
	if err != nil {
		return false, fmt.Errorf("consul acl authorize: ask Consul at %s: %w", t.v.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return false, fmt.Errorf("consul acl authorize: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized {
			return false, fmt.Errorf("consul acl authorize: %w (%s)", ErrRefused, strings.TrimSpace(string(data)))
		}
		return false, fmt.Errorf("consul acl authorize: Consul answered %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	var out []authzResponse
	if err := json.Unmarshal(data, &out); err != nil || len(out) != 1 {
		return false, fmt.Errorf("consul acl authorize: unreadable answer %q", data)
	}
	return out[0].Allow, nil
}
