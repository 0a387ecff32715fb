package config

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Traffic management of one service (control.services.<name>): its
// subsets, the default subset, and its routes (Route, controlgateway.go).

// Subset names the instances of a service that match every key of Match
// (docs/configuration.md): version: v2 holds for an instance whose
// registry meta (Consul service meta) has version=v2, or whose CMDB host
// labels have it, or that carries the Consul tag "version=v2"; the key
// "tag" holds for an instance carrying that very tag (tag: canary); the
// keys env, owner, role, tenant, status and hostname are the CMDB host's
// fields. Each subset is its own cluster, wire.SubsetCluster (orders/v2).
type Subset struct {
	Name  string            `mapstructure:"name" yaml:"name"`
	Match map[string]string `mapstructure:"match" yaml:"match"`
	// Policy is the subset's policy: the service's, with the fields
	// written here overriding it (decoded on top of it at load, as
	// policies.services entries are on top of policies.default). The
	// zero Policy means the service's.
	Policy Policy `mapstructure:"policy" yaml:"policy,omitempty"`
}

// RouteMirror copies Percent of a route's requests to Service (the
// route's own service when empty) or its Subset; the copy's response is
// discarded and never slows or fails the original.
type RouteMirror struct {
	Service string  `mapstructure:"service" yaml:"service,omitempty"`
	Subset  string  `mapstructure:"subset" yaml:"subset,omitempty"`
	Percent float64 `mapstructure:"percent" yaml:"percent"`
}

// Set reports whether the route mirrors.
func (m RouteMirror) Set() bool { return m != RouteMirror{} }

// RouteFault injects a delay and/or an abort into a share of a route's
// requests; with Headers, only into requests matching all of them.
type RouteFault struct {
	Delay   FaultDelay    `mapstructure:"delay" yaml:"delay,omitempty"`
	Abort   FaultAbort    `mapstructure:"abort" yaml:"abort,omitempty"`
	Headers []HeaderMatch `mapstructure:"headers" yaml:"headers,omitempty"`
}

// Set reports whether any fault field is written.
func (f RouteFault) Set() bool {
	return f.Delay != FaultDelay{} || f.Abort != FaultAbort{} || len(f.Headers) > 0
}

// FaultDelay holds Percent of requests for Fixed before they go on.
type FaultDelay struct {
	Fixed   time.Duration `mapstructure:"fixed" yaml:"fixed"`
	Percent float64       `mapstructure:"percent" yaml:"percent"`
}

// FaultAbort answers Percent of requests with HTTPStatus, or (gRPC
// requests) GRPCStatus, without calling the service: exactly one.
type FaultAbort struct {
	HTTPStatus int     `mapstructure:"http_status" yaml:"http_status,omitempty"`
	GRPCStatus int     `mapstructure:"grpc_status" yaml:"grpc_status,omitempty"`
	Percent    float64 `mapstructure:"percent" yaml:"percent"`
}

// HashKey is the input of a consistent hash (load_balancer.hash): a
// request header, a cookie, or the caller's IP; exactly one. A request
// without it is balanced at random.
type HashKey struct {
	Header string `mapstructure:"header" yaml:"header,omitempty"`
	Cookie string `mapstructure:"cookie" yaml:"cookie,omitempty"`
	// CookieTTL makes the proxy set Cookie when the request has none (a
	// sticky session that starts on the first call); 0 only reads it.
	CookieTTL time.Duration `mapstructure:"cookie_ttl" yaml:"cookie_ttl,omitempty"`
	SourceIP  bool          `mapstructure:"source_ip" yaml:"source_ip,omitempty"`
}

// Hashed reports whether the load balancer hashes requests (ring_hash
// or maglev).
func (l LoadBalancer) Hashed() bool { return l.Policy == "ring_hash" || l.Policy == "maglev" }

var subsetNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// SubsetOf returns the named subset of service, or false.
func (c Control) SubsetOf(service, subset string) (Subset, bool) {
	for _, s := range c.Services[service].Subsets {
		if s.Name == subset {
			return s, true
		}
	}
	return Subset{}, false
}

func targetText(service, subset string) string {
	if subset == "" {
		return fmt.Sprintf("service %q", service)
	}
	return fmt.Sprintf("%s/%s", service, subset)
}

// validateTraffic checks every service's subsets, default subset and
// routes (control.services.<name>).
func (c *Control) validateTraffic(v *validator) {
	subsets := map[string]map[string]bool{}
	for name, s := range c.Services {
		at := "control.services." + name
		seen := map[string]bool{}
		for i, sub := range s.Subsets {
			sp := fmt.Sprintf("%s.subsets[%d]", at, i)
			if v.check(sp+".name", subsetNameRE.MatchString(sub.Name), "%q is not a subset name (lowercase letters, digits, '-' and '_'); write e.g. v2", sub.Name) {
				v.check(sp+".name", !seen[sub.Name], "%q is already the name of another subset", sub.Name)
			}
			seen[sub.Name] = true
			v.check(sp+".match", len(sub.Match) > 0, "is required: the keys an instance must have (e.g. version: v2)")
			for _, k := range sortedMapKeys(sub.Match) {
				v.check(sp+".match."+k, k != "" && sub.Match[k] != "", "key and value must not be empty")
			}
			if sub.Policy.ConnectTimeout != 0 {
				sub.Policy.validate(v, sp+".policy")
			}
		}
		for i := range s.Subsets {
			for j := range i {
				if equalMatch(s.Subsets[i].Match, s.Subsets[j].Match) {
					v.add(fmt.Sprintf("%s.subsets[%d].match", at, i), "is the same as subsets[%d]'s (%s): both would hold the same instances", j, s.Subsets[j].Name)
				}
			}
		}
		subsets[name] = seen
	}
	for _, name := range sortedMapKeys(c.Services) {
		s := c.Services[name]
		at := "control.services." + name
		if s.DefaultSubset != "" {
			v.check(at+".default_subset", subsets[name][s.DefaultSubset], "unknown subset %q (subsets: %s)", s.DefaultSubset, subsetList(subsets[name]))
		}
		validateRoutes(v, at+".routes", s.Routes, &routeScope{owner: name, subsets: subsets})
	}
}

func equalMatch(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func subsetList(m map[string]bool) string {
	if len(m) == 0 {
		return "none configured"
	}
	return strings.Join(sortedMapKeys(m), ", ")
}

func sortedMapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// validateGatewayOnly refuses a gateway route's service-only fields.
func (r *Route) validateGatewayOnly(v *validator, at string) {
	for _, f := range []struct {
		key string
		set bool
	}{{"subset", r.Subset != ""}, {"mirror", r.Mirror.Set()}, {"fault", r.Fault.Set()}} {
		v.check(at+"."+f.key, !f.set, "only applies to a service's routes (control.services.<name>.routes)")
	}
	for i, s := range r.Split {
		v.check(fmt.Sprintf("%s.split[%d].subset", at, i), s.Subset == "", "only applies to a service's routes (control.services.<name>.routes)")
	}
}

// subsetRef checks that a service (the owner when empty) has subset.
func (sc *routeScope) subsetRef(v *validator, path, service, subset string) {
	if subset == "" {
		return
	}
	service = cmpOr(service, sc.owner)
	v.check(path, sc.subsets[service][subset], "unknown subset %q of %s (subsets: %s)", subset, service, subsetList(sc.subsets[service]))
}

func percent(v *validator, path string, p float64, required bool) {
	if required || p != 0 {
		v.check(path, p > 0 && p <= 100, "must be more than 0 and at most 100, got %g", p)
	}
}

// validateService checks a service route's own fields.
func (r *Route) validateService(v *validator, at string, sc *routeScope) {
	for _, f := range []struct {
		key string
		set bool
	}{{"host", r.Host != ""}, {"auth", r.Auth.JWT != "" || r.Auth.APIKey || r.Auth.Require != "" || len(r.Auth.Claims)+len(r.Auth.ClaimRules) > 0},
		{"cors", r.CORS.Set()}, {"plaintext", r.Plaintext}} {
		v.check(at+"."+f.key, !f.set, "only applies to a gateway's routes (control.gateway.routes); a service's routes match its own host names")
	}
	sc.subsetRef(v, at+".subset", r.Service, r.Subset)
	for i, s := range r.Split {
		sc.subsetRef(v, fmt.Sprintf("%s.split[%d].subset", at, i), s.Service, s.Subset)
	}
	if m := r.Mirror; m.Set() {
		if m.Service != "" {
			v.meshServiceName(at+".mirror.service", m.Service)
		}
		v.check(at+".mirror", m.Service != "" || m.Subset != "", "needs a service or a subset to copy to")
		sc.subsetRef(v, at+".mirror.subset", m.Service, m.Subset)
		percent(v, at+".mirror.percent", m.Percent, true)
		v.check(at+".mirror", r.Redirect == (RouteRedirect{}) && r.DirectResponse.Status == 0, "only applies to a route to a service or split")
	}
	if f := r.Fault; f.Set() {
		v.check(at+".fault", f.Delay != FaultDelay{} || f.Abort != FaultAbort{}, "needs a delay or an abort (or both)")
		if f.Delay != (FaultDelay{}) {
			v.check(at+".fault.delay.fixed", f.Delay.Fixed > 0, "must be more than 0, got %v", f.Delay.Fixed)
			percent(v, at+".fault.delay.percent", f.Delay.Percent, true)
		}
		if a := f.Abort; a != (FaultAbort{}) {
			v.check(at+".fault.abort", (a.HTTPStatus != 0) != (a.GRPCStatus != 0), "needs exactly one of http_status and grpc_status")
			v.check(at+".fault.abort.http_status", a.HTTPStatus == 0 || a.HTTPStatus >= 200 && a.HTTPStatus <= 599, "must be an HTTP status from 200 to 599, got %d", a.HTTPStatus)
			v.check(at+".fault.abort.grpc_status", a.GRPCStatus >= 0 && a.GRPCStatus <= 16, "must be a gRPC status code from 1 to 16, got %d", a.GRPCStatus)
			percent(v, at+".fault.abort.percent", a.Percent, true)
		}
		for i, h := range f.Headers {
			hp := fmt.Sprintf("%s.fault.headers[%d]", at, i)
			v.check(hp+".name", headerNameRE.MatchString(strings.TrimPrefix(h.Name, ":")), "%q is not a valid HTTP header name", h.Name)
			v.regex(hp+".regex", h.Regex)
		}
		v.check(at+".fault", r.Redirect == (RouteRedirect{}) && r.DirectResponse.Status == 0, "only applies to a route to a service or split")
	}
}

func (l *LoadBalancer) validateHash(v *validator, path string) {
	k := l.Hash
	n := 0
	for _, set := range []bool{k.Header != "", k.Cookie != "", k.SourceIP} {
		if set {
			n++
		}
	}
	hp := path + ".hash"
	if l.Hashed() {
		v.check(hp, n == 1, "%s needs exactly one of header, cookie and source_ip (has %d)", l.Policy, n)
	} else {
		v.check(hp, n == 0 && k.CookieTTL == 0, "only applies to policy ring_hash or maglev, got %s", l.Policy)
	}
	v.check(hp+".header", k.Header == "" || headerNameRE.MatchString(k.Header), "%q is not a valid HTTP header name", k.Header)
	v.check(hp+".cookie", k.Cookie == "" || headerNameRE.MatchString(k.Cookie), "%q is not a valid cookie name", k.Cookie)
	v.check(hp+".cookie_ttl", k.CookieTTL >= 0 && (k.CookieTTL == 0 || k.Cookie != ""), "must not be negative, and needs cookie")
	v.check(path+".ring_size", l.RingSize >= 0 && l.RingSize <= 8_388_608, "must be between 0 (the default, 1024) and 8388608, got %d", l.RingSize)
	v.check(path+".ring_size", l.RingSize == 0 || l.Policy == "ring_hash", "only applies to policy ring_hash")
}
