// Package rbac is the agent's form of Envoy's RBAC filters: a callee's
// authorization policy (deny rules, allow rules, a default) and its
// evaluation against one request or connection. It keeps Envoy's
// semantics so that an agent and an Envoy given the same resources decide
// alike: a request any deny rule matches is refused; else, when the
// policy has an allow set, a request none of its rules matches is
// refused; else it is served. dataplane/xdsconf builds a Policy from the
// filters' protos, dataplane/chain (HTTP) and dataplane/tcpproxy (L4)
// evaluate it. Evaluation allocates nothing on the common paths.
package rbac

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/meshvm/mesh/identity"
)

// Policy is one service's authorization: what the DENY filter and the
// ALLOW filter of its inbound listener say. The zero Policy serves
// everything.
type Policy struct {
	// Deny are evaluated first: a match refuses.
	Deny []Rule `json:"deny,omitempty"`
	// Allow are evaluated next: a match serves.
	Allow []Rule `json:"allow,omitempty"`
	// DefaultDeny refuses what no rule matched: true when an ALLOW
	// filter is present (an allow-by-default policy carries a catch-all
	// allow rule, config.AuthzDefaultRule, as its last).
	DefaultDeny bool `json:"default_deny"`
}

// Empty reports whether the policy serves everything without a rule.
func (p *Policy) Empty() bool {
	return p == nil || len(p.Deny) == 0 && len(p.Allow) == 0 && !p.DefaultDeny
}

// Rule is one RBAC policy: it matches when any of its principals and any
// of its permissions match.
type Rule struct {
	Name        string       `json:"name"`
	Principals  []Principal  `json:"principals"`
	Permissions []Permission `json:"permissions"`
}

// Principal says who may call (Envoy's Principal, the subset the mesh
// writes and reads).
type Principal struct {
	// Any matches every caller, with an identity or not.
	Any bool `json:"any,omitempty"`
	// Authenticated matches a caller with a verified identity; with ID
	// set, that identity exactly (a SPIFFE ID URI); with IDPrefix, one
	// starting so.
	Authenticated bool   `json:"authenticated,omitempty"`
	ID            string `json:"id,omitempty"`
	IDPrefix      string `json:"id_prefix,omitempty"`
	// Or, And and Not combine principals.
	Or  []Principal `json:"or,omitempty"`
	And []Principal `json:"and,omitempty"`
	Not *Principal  `json:"not,omitempty"`
}

// Permission says what may be done (Envoy's Permission subset): L7
// conditions never match a connection (L4), so xdsconf allows only Any
// and its combinations there.
type Permission struct {
	Any bool `json:"any,omitempty"`
	// Header matches a request header (":method", ":authority" and
	// ":path" are the pseudo-headers).
	Header *HeaderMatch `json:"header,omitempty"`
	// Path matches the URL path (no query).
	Path *StringMatch `json:"path,omitempty"`
	Or   []Permission `json:"or,omitempty"`
	And  []Permission `json:"and,omitempty"`
	Not  *Permission  `json:"not,omitempty"`
}

// HeaderMatch matches one header's value (several values are joined
// with ",", as Envoy does).
type HeaderMatch struct {
	// Name is canonical (http.CanonicalHeaderKey) or a pseudo-header.
	Name string `json:"name"`
	// Present matches when the header is there (Match is then unused).
	Present bool        `json:"present,omitempty"`
	Match   StringMatch `json:"match"`
	// Invert matches when the condition does not hold.
	Invert bool `json:"invert,omitempty"`
}

// StringMatch is Envoy's StringMatcher subset: exactly one of Exact,
// Prefix, Suffix, Contains or Regex (anchored: the whole value).
type StringMatch struct {
	Exact      *string        `json:"exact,omitempty"`
	Prefix     string         `json:"prefix,omitempty"`
	Suffix     string         `json:"suffix,omitempty"`
	Contains   string         `json:"contains,omitempty"`
	Regex      *regexp.Regexp `json:"regex,omitempty"`
	IgnoreCase bool           `json:"ignore_case,omitempty"`
}

// Match reports whether s matches.
func (m *StringMatch) Match(s string) bool {
	if m.Regex != nil {
		return m.Regex.MatchString(s)
	}
	if m.IgnoreCase {
		return m.matchFold(s)
	}
	switch {
	case m.Exact != nil:
		return s == *m.Exact
	case m.Prefix != "":
		return strings.HasPrefix(s, m.Prefix)
	case m.Suffix != "":
		return strings.HasSuffix(s, m.Suffix)
	case m.Contains != "":
		return strings.Contains(s, m.Contains)
	}
	return false
}

func (m *StringMatch) matchFold(s string) bool {
	switch {
	case m.Exact != nil:
		return strings.EqualFold(s, *m.Exact)
	case m.Prefix != "":
		return len(s) >= len(m.Prefix) && strings.EqualFold(s[:len(m.Prefix)], m.Prefix)
	case m.Suffix != "":
		return len(s) >= len(m.Suffix) && strings.EqualFold(s[len(s)-len(m.Suffix):], m.Suffix)
	case m.Contains != "":
		return strings.Contains(strings.ToLower(s), strings.ToLower(m.Contains))
	}
	return false
}

// Request is what a decision is made on. Header is nil for a connection
// (L4): then only principals and Any permissions can match.
type Request struct {
	// Peer is the caller's verified SPIFFE ID; Authenticated is false
	// for a caller without one (plaintext).
	Peer          identity.ID
	Authenticated bool
	Method, Host  string
	Path          string
	Header        http.Header
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Allowed bool
	// Rule names the rule that decided, or config.AuthzDefaultRule
	// ("default") when none matched.
	Rule string
	// Action is "allow" or "deny": what Rule says.
	Action string
}

// DefaultRule names a decision no rule made (config.AuthzDefaultRule).
const DefaultRule = "default"

// Evaluate decides on r: deny rules, then allow rules, then the default.
func (p *Policy) Evaluate(r *Request) Decision {
	if p == nil {
		return Decision{Allowed: true, Rule: DefaultRule, Action: "allow"}
	}
	for i := range p.Deny {
		if p.Deny[i].matches(r) {
			return Decision{Allowed: false, Rule: p.Deny[i].Name, Action: "deny"}
		}
	}
	for i := range p.Allow {
		if p.Allow[i].matches(r) {
			return Decision{Allowed: true, Rule: p.Allow[i].Name, Action: "allow"}
		}
	}
	if p.DefaultDeny {
		return Decision{Allowed: false, Rule: DefaultRule, Action: "deny"}
	}
	return Decision{Allowed: true, Rule: DefaultRule, Action: "allow"}
}

// L4 reports whether the policy can be decided on connections alone: no
// permission but Any (and combinations of it).
func (p *Policy) L4() bool {
	if p == nil {
		return true
	}
	for _, set := range [][]Rule{p.Deny, p.Allow} {
		for _, r := range set {
			for i := range r.Permissions {
				if !r.Permissions[i].l4() {
					return false
				}
			}
		}
	}
	return true
}

func (p *Permission) l4() bool {
	if p.Header != nil || p.Path != nil {
		return false
	}
	for _, set := range [][]Permission{p.Or, p.And} {
		for i := range set {
			if !set[i].l4() {
				return false
			}
		}
	}
	return p.Not == nil || p.Not.l4()
}

func (r *Rule) matches(req *Request) bool {
	return anyPrincipal(r.Principals, req) && anyPermission(r.Permissions, req)
}

func anyPrincipal(ps []Principal, r *Request) bool {
	for i := range ps {
		if ps[i].matches(r) {
			return true
		}
	}
	return false
}

func (p *Principal) matches(r *Request) bool {
	switch {
	case p.Any:
		return true
	case p.Authenticated:
		if !r.Authenticated {
			return false
		}
		if p.ID != "" {
			return idEquals(r.Peer, p.ID)
		}
		if p.IDPrefix != "" {
			return idHasPrefix(r.Peer, p.IDPrefix)
		}
		return true
	case p.Or != nil:
		return anyPrincipal(p.Or, r)
	case p.And != nil:
		for i := range p.And {
			if !p.And[i].matches(r) {
				return false
			}
		}
		return true
	case p.Not != nil:
		return !p.Not.matches(r)
	}
	return false
}

// idPieces are the pieces of id's URI, so that matching it builds no
// string.
func idPieces(id identity.ID) [6]string {
	return [...]string{"spiffe://", id.TrustDomain, "/ns/", id.Namespace, "/svc/", id.Service}
}

// idEquals reports whether id's URI is s.
func idEquals(id identity.ID, s string) bool {
	for _, piece := range idPieces(id) {
		if !strings.HasPrefix(s, piece) {
			return false
		}
		s = s[len(piece):]
	}
	return s == ""
}

// idHasPrefix reports whether id's URI starts with prefix.
func idHasPrefix(id identity.ID, prefix string) bool {
	for _, piece := range idPieces(id) {
		if len(prefix) <= len(piece) {
			return piece[:len(prefix)] == prefix
		}
		if !strings.HasPrefix(prefix, piece) {
			return false
		}
		prefix = prefix[len(piece):]
	}
	return prefix == ""
}

func anyPermission(ps []Permission, r *Request) bool {
	for i := range ps {
		if ps[i].matches(r) {
			return true
		}
	}
	return false
}

func (p *Permission) matches(r *Request) bool {
	switch {
	case p.Any:
		return true
	case p.Header != nil:
		if r.Header == nil {
			return false
		}
		return p.Header.matches(r)
	case p.Path != nil:
		if r.Header == nil {
			return false
		}
		return p.Path.Match(r.Path)
	case p.Or != nil:
		return anyPermission(p.Or, r)
	case p.And != nil:
		for i := range p.And {
			if !p.And[i].matches(r) {
				return false
			}
		}
		return true
	case p.Not != nil:
		return !p.Not.matches(r)
	}
	return false
}

func (h *HeaderMatch) matches(r *Request) bool {
	var v string
	present := true
	switch h.Name {
	case ":method":
		v = r.Method
	case ":authority":
		v = r.Host
	case ":path":
		v = r.Path
	default:
		vs := r.Header[h.Name]
		switch len(vs) {
		case 0:
			present = false
		case 1:
			v = vs[0]
		default:
			v = strings.Join(vs, ",")
		}
	}
	var ok bool
	if h.Present {
		ok = present
	} else {
		ok = present && h.Match.Match(v)
	}
	return ok != h.Invert
}
