package config

import (
	"fmt"
	"regexp"
	"strings"
)

// Authorization is the callee-side access policy of one service
// (control.authorization): deny rules first, then allow rules, then the
// default. mesh control pushes it to the service's agents as the standard
// Envoy RBAC filters (see docs/configuration.md).
type Authorization struct {
	// Service is the callee: a Consul service (orders) or a Kubernetes
	// service (orders.shop). It need not be registered yet.
	Service string `mapstructure:"service" yaml:"service"`
	// Default is what happens to a request no rule matched: allow (while
	// adopting) or deny (zero trust).
	Default string      `mapstructure:"default" yaml:"default"`
	Rules   []AuthzRule `mapstructure:"rules" yaml:"rules"`
}

// AuthzRule matches requests; every condition it sets must hold (an empty
// list is no condition). A rule must set at least one condition.
type AuthzRule struct {
	// Name names the rule in access logs and metrics; default
	// "<action>-<index>" (deny-0, allow-1).
	Name string `mapstructure:"name" yaml:"name,omitempty"`
	// Action is allow or deny.
	Action string `mapstructure:"action" yaml:"action"`
	// From lists the calling services (their verified SPIFFE IDs); "*" is
	// any authenticated caller. Unset: any caller, with an identity or not.
	From []string `mapstructure:"from" yaml:"from,omitempty"`
	// Methods are HTTP methods (GET, POST...), any of them.
	Methods []string `mapstructure:"methods" yaml:"methods,omitempty"`
	// Paths are URL path prefixes (/api/), any of them.
	Paths []string `mapstructure:"paths" yaml:"paths,omitempty"`
	// Headers must all match.
	Headers []AuthzHeader `mapstructure:"headers" yaml:"headers,omitempty"`
}

// AuthzHeader is one request header condition: exactly one of Exact,
// Prefix, Regex (RE2, matching the whole value) or Present.
type AuthzHeader struct {
	Name    string `mapstructure:"name" yaml:"name"`
	Exact   string `mapstructure:"exact" yaml:"exact,omitempty"`
	Prefix  string `mapstructure:"prefix" yaml:"prefix,omitempty"`
	Regex   string `mapstructure:"regex" yaml:"regex,omitempty"`
	Present bool   `mapstructure:"present" yaml:"present,omitempty"`
}

// Authorization actions and defaults.
const (
	AuthzAllow = "allow"
	AuthzDeny  = "deny"
	// AuthzAnyCaller in From is any caller with a verified identity.
	AuthzAnyCaller = "*"
	// AuthzDefaultRule names the decision no rule made; no rule may take it.
	AuthzDefaultRule = "default"
)

// RuleName is the rule's name, or its default.
func (r AuthzRule) RuleName(i int) string {
	if r.Name != "" {
		return r.Name
	}
	return fmt.Sprintf("%s-%d", r.Action, i)
}

// AuthorizationFor returns the entry of service, if any.
func (c *Control) AuthorizationFor(service string) (Authorization, bool) {
	for _, a := range c.Authorization {
		if a.Service == service {
			return a, true
		}
	}
	return Authorization{}, false
}

// ruleNameRE keeps rule names usable as metric labels and Envoy policy
// names.
var ruleNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62})$`)

// authzMethodRE is an HTTP method (RFC 9110 token, upper case by convention).
var authzMethodRE = regexp.MustCompile(`^[A-Z]+$`)

func validateAuthorization(v *validator, list []Authorization) {
	seen := map[string]int{}
	for i, a := range list {
		p := fmt.Sprintf("control.authorization[%d]", i)
		v.meshServiceName(p+".service", a.Service)
		if j, dup := seen[a.Service]; dup {
			v.add(p+".service", "%s already has an entry (control.authorization[%d]); put its rules in one", a.Service, j)
		}
		seen[a.Service] = i
		v.check(p+".default", a.Default == AuthzAllow || a.Default == AuthzDeny,
			"%q is not one of allow, deny (deny for zero trust, allow while adopting)", a.Default)
		names := map[string]bool{}
		for k, r := range a.Rules {
			rp := fmt.Sprintf("%s.rules[%d]", p, k)
			r.validate(v, rp)
			if r.Name != "" {
				v.check(rp+".name", r.Name != AuthzDefaultRule && ruleNameRE.MatchString(r.Name),
					"%q is not a rule name (lowercase letters, digits, '.', '_', '-'; not %q)", r.Name, AuthzDefaultRule)
			}
			n := r.RuleName(k)
			v.check(rp+".name", !names[n], "%q names two rules of %s", n, a.Service)
			names[n] = true
		}
	}
}

func (r AuthzRule) validate(v *validator, p string) {
	v.check(p+".action", r.Action == AuthzAllow || r.Action == AuthzDeny, "%q is not one of allow, deny", r.Action)
	v.check(p, r.From != nil || len(r.Methods) > 0 || len(r.Paths) > 0 || len(r.Headers) > 0,
		"an empty rule would match every request; give it from, methods, paths or headers (or set the default)")
	v.check(p+".from", r.From == nil || len(r.From) > 0, "is empty: no caller could match; remove it for any caller, or write [\"*\"] for any authenticated one")
	for i, f := range r.From {
		if f != AuthzAnyCaller {
			v.meshServiceName(fmt.Sprintf("%s.from[%d]", p, i), f)
		}
	}
	for i, m := range r.Methods {
		v.check(fmt.Sprintf("%s.methods[%d]", p, i), authzMethodRE.MatchString(m), "%q is not an HTTP method; write e.g. GET", m)
	}
	for i, path := range r.Paths {
		v.check(fmt.Sprintf("%s.paths[%d]", p, i), strings.HasPrefix(path, "/"), "%q is not a path prefix; write e.g. /api/", path)
	}
	for i, h := range r.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", p, i)
		v.check(hp+".name", headerNameRE.MatchString(h.Name), "%q is not a valid HTTP header name", h.Name)
		set := 0
		for _, s := range []bool{h.Exact != "", h.Prefix != "", h.Regex != "", h.Present} {
			if s {
				set++
			}
		}
		v.check(hp, set == 1, "set exactly one of exact, prefix, regex, present")
		if h.Regex != "" {
			if _, err := regexp.Compile(h.Regex); err != nil {
				v.add(hp+".regex", "%q is not a regular expression (RE2): %v", h.Regex, err)
			}
		}
	}
}
