package routematch

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Table is a compiled route configuration. It is immutable.
type Table struct {
	name     string
	vhosts   []*VirtualHost
	exact    map[string]*VirtualHost
	suffixes []wildcard // "*.example.com": longest suffix first
	prefixes []wildcard // "shop.*": longest prefix first
	any      *VirtualHost
}

type wildcard struct {
	part string
	vh   *VirtualHost
}

// VirtualHost is a compiled virtual host: its domains and its routes in
// the order they are tried.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []*Route
}

// Name is the route configuration's name.
func (t *Table) Name() string { return t.name }

// VirtualHosts are the table's virtual hosts in configuration order.
func (t *Table) VirtualHosts() []*VirtualHost { return t.vhosts }

// Compile checks and compiles a route configuration. Errors name the
// virtual host and route (by index and name) and the field that is wrong.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, fmt.Errorf("route configuration: missing")
	}
	t := &Table{name: rc.GetName(), exact: map[string]*VirtualHost{}}
	if rc.GetVhds() != nil {
		return nil, fmt.Errorf("route configuration %q: vhds is not supported", rc.GetName())
	}
	outer, err := compileMutations(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(),
		rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove())
	if err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	seen := map[string]int{}
	for i, v := range rc.GetVirtualHosts() {
		where := fmt.Sprintf("virtual_hosts[%d] %q", i, v.GetName())
		vh, err := compileVirtualHost(v, outer, rc.GetMostSpecificHeaderMutationsWins())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(vh.Domains) == 0 {
			return nil, fmt.Errorf("%s: domains: empty", where)
		}
		for j, d := range vh.Domains {
			if k, dup := seen[d]; dup {
				return nil, fmt.Errorf("%s: domains[%d]: %q is also a domain of virtual_hosts[%d]", where, j, d, k)
			}
			seen[d] = i
			switch {
			case d == "*":
				t.any = vh
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, wildcard{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, wildcard{d[:len(d)-1], vh})
			default:
				t.exact[d] = vh
			}
		}
		t.vhosts = append(t.vhosts, vh)
	}
	longestFirst := func(a, b wildcard) int { return cmp.Compare(len(b.part), len(a.part)) }
	slices.SortStableFunc(t.suffixes, longestFirst)
	slices.SortStableFunc(t.prefixes, longestFirst)
	return t, nil
}

func compileVirtualHost(v *routev3.VirtualHost, outer mutations, innerWins bool) (*VirtualHost, error) {
	vh := &VirtualHost{Name: v.GetName()}
	for j, d := range v.GetDomains() {
		d = strings.ToLower(d)
		if d == "" {
			return nil, fmt.Errorf("domains[%d]: empty", j)
		}
		if d != "*" && strings.Count(d, "*") > 0 {
			if strings.Count(d, "*") > 1 || !(strings.HasPrefix(d, "*") || strings.HasSuffix(d, "*")) {
				return nil, fmt.Errorf("domains[%d]: %q: a wildcard may only be the first or last character", j, d)
			}
		}
		vh.Domains = append(vh.Domains, d)
	}
	switch {
	case v.GetMatcher() != nil:
		return nil, fmt.Errorf("matcher: the generic matcher tree is not supported, use routes")
	case v.GetRequireTls() != routev3.VirtualHost_NONE:
		return nil, fmt.Errorf("require_tls: not supported")
	case len(v.GetRequestMirrorPolicies()) > 0:
		return nil, fmt.Errorf("request_mirror_policies: not supported")
	case v.GetRetryPolicyTypedConfig() != nil:
		return nil, fmt.Errorf("retry_policy_typed_config: not supported")
	case v.GetHedgePolicy() != nil:
		return nil, fmt.Errorf("hedge_policy: not supported")
	}
	own, err := compileMutations(v.GetRequestHeadersToAdd(), v.GetRequestHeadersToRemove(),
		v.GetResponseHeadersToAdd(), v.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	vmut := nest(own, outer, innerWins)
	var vretry *RetryPolicy
	if v.GetRetryPolicy() != nil {
		if vretry, err = compileRetry(v.GetRetryPolicy()); err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
	}
	for k, r := range v.GetRoutes() {
		rt, err := compileRoute(r, v, vmut, innerWins, vretry)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", k, r.GetName(), err)
		}
		rt.VirtualHost = vh.Name
		rt.Index = k
		vh.Routes = append(vh.Routes, rt)
	}
	return vh, nil
}

// Host finds the virtual host serving a Host header value as Envoy does:
// an exact domain first, then the longest matching suffix wildcard
// ("*.example.com"), then the longest prefix wildcard ("shop.*"), then
// "*". Domains compare case-insensitively; a host with a port matches a
// domain naming that port exactly, and is otherwise matched without it
// (Envoy's strip_any_host_port), then as written against wildcards that
// name a port ("orders:*").
func (t *Table) Host(host string) *VirtualHost {
	if hasUpper(host) {
		host = strings.ToLower(host)
	}
	if h, ok := stripPort(host); ok {
		if vh, ok := t.exact[host]; ok {
			return vh
		}
		if vh := t.host(h); vh != nil {
			return vh
		}
		// A wildcard that names a port ("orders:*").
		if vh := t.host(host); vh != nil {
			return vh
		}
		return t.any
	}
	if vh := t.host(host); vh != nil {
		return vh
	}
	return t.any
}

func (t *Table) host(h string) *VirtualHost {
	if vh, ok := t.exact[h]; ok {
		return vh
	}
	for _, w := range t.suffixes {
		if len(h) > len(w.part) && strings.HasSuffix(h, w.part) {
			return w.vh
		}
	}
	for _, w := range t.prefixes {
		if len(h) > len(w.part) && strings.HasPrefix(h, w.part) {
			return w.vh
		}
	}
	return nil
}

// Match finds the route for a request: the virtual host by r.Host, then
// its first route (in configuration order) whose every condition holds.
func (t *Table) Match(r *http.Request) (*Route, bool) {
	vh := t.Host(r.Host)
	if vh == nil {
		return nil, false
	}
	return vh.Match(r)
}

// Match finds the first route of the virtual host matching r.
func (vh *VirtualHost) Match(r *http.Request) (*Route, bool) {
	path := r.URL.EscapedPath()
	for _, rt := range vh.Routes {
		if rt.matches(r, path) {
			return rt, true
		}
	}
	return nil, false
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// stripPort removes a ":port" suffix (numeric), leaving IPv6 brackets.
func stripPort(h string) (string, bool) {
	i := strings.LastIndexByte(h, ':')
	if i < 0 || i == len(h)-1 || strings.IndexByte(h[i:], ']') >= 0 {
		return h, false
	}
	for j := i + 1; j < len(h); j++ {
		if h[j] < '0' || h[j] > '9' {
			return h, false
		}
	}
	if strings.HasPrefix(h, "[") || strings.IndexByte(h[:i], ':') < 0 {
		return h[:i], true
	}
	return h, false
}
