package xdsconf

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/wire"
)

// inboundAuthorization reads the RBAC filters of the inbound listener:
// the network filters (wire.RBACNetworkFilter) of a TCP listener, the
// HTTP filters (wire.RBACFilter) of its connection manager, in order.
// Every filter chain must carry the same rules (one policy per service,
// whatever the transport). A filter the agent cannot enforce as Envoy
// would is an error: the push is NACKed, never half applied. nil: no
// RBAC filter.
func inboundAuthorization(l *listenerv3.Listener) (*rbac.Policy, error) {
	chains := slices.Clone(l.GetFilterChains())
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains, d)
	}
	var first []*rbacconfigv3.RBAC
	for i, fc := range chains {
		sets, err := chainRBAC(fc)
		if err != nil {
			return nil, fmt.Errorf("filter chain %d: %w", i, err)
		}
		if i == 0 {
			first = sets
			continue
		}
		if !slices.EqualFunc(first, sets, func(a, b *rbacconfigv3.RBAC) bool { return proto.Equal(a, b) }) {
			return nil, fmt.Errorf("filter chain %d has other RBAC rules than filter chain 0; the agent enforces one policy per service", i)
		}
	}
	if len(first) == 0 {
		return nil, nil
	}
	return policyOf(first)
}

// chainRBAC returns the enforcing RBAC sets of one filter chain, in
// evaluation order.
func chainRBAC(fc *listenerv3.FilterChain) ([]*rbacconfigv3.RBAC, error) {
	var out []*rbacconfigv3.RBAC
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case f.GetName() == wire.RBACNetworkFilter || tc.MessageIs(&rbacnetv3.RBAC{}):
			var n rbacnetv3.RBAC
			if err := tc.UnmarshalTo(&n); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if n.GetMatcher() != nil {
				return nil, fmt.Errorf("filter %s: matcher-based RBAC is not supported (use rules)", f.GetName())
			}
			if r := n.GetRules(); r != nil {
				out = append(out, r)
			}
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			var h hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&h); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			for _, hf := range h.GetHttpFilters() {
				if hf.GetName() != wire.RBACFilter && !hf.GetTypedConfig().MessageIs(&rbachttpv3.RBAC{}) {
					continue
				}
				if hf.GetDisabled() {
					return nil, fmt.Errorf("http filter %s: a disabled RBAC filter (enabled per route) is not supported", hf.GetName())
				}
				var r rbachttpv3.RBAC
				if err := hf.GetTypedConfig().UnmarshalTo(&r); err != nil {
					return nil, fmt.Errorf("http filter %s: %w", hf.GetName(), err)
				}
				if r.GetMatcher() != nil {
					return nil, fmt.Errorf("http filter %s: matcher-based RBAC is not supported (use rules)", hf.GetName())
				}
				// Shadow rules only log in Envoy; the agent has nothing to
				// enforce for them.
				if rules := r.GetRules(); rules != nil {
					out = append(out, rules)
				}
			}
		}
	}
	return out, nil
}

// policyOf merges RBAC sets into one policy: DENY sets' policies are the
// deny rules, the ALLOW set's the allow rules (at most one ALLOW set: two
// would each have to allow). LOG sets enforce nothing.
func policyOf(sets []*rbacconfigv3.RBAC) (*rbac.Policy, error) {
	p := &rbac.Policy{}
	allows := 0
	for _, s := range sets {
		var into *[]rbac.Rule
		switch s.GetAction() {
		case rbacconfigv3.RBAC_DENY:
			into = &p.Deny
		case rbacconfigv3.RBAC_ALLOW:
			if allows++; allows > 1 {
				return nil, fmt.Errorf("more than one ALLOW RBAC filter is not supported; merge their policies")
			}
			p.DefaultDeny = true
			into = &p.Allow
		case rbacconfigv3.RBAC_LOG:
			continue
		default:
			return nil, fmt.Errorf("RBAC action %s is not supported", s.GetAction())
		}
		if s.GetAuditLoggingOptions() != nil {
			return nil, fmt.Errorf("RBAC audit_logging_options are not supported")
		}
		names := make([]string, 0, len(s.GetPolicies()))
		for name := range s.GetPolicies() {
			names = append(names, name)
		}
		slices.Sort(names)
		// A catch-all allow named "default" (translate's default allow)
		// goes last, so that the named rules say what they served.
		if i := slices.Index(names, rbac.DefaultRule); i >= 0 && s.GetAction() == rbacconfigv3.RBAC_ALLOW {
			names = append(slices.Delete(names, i, i+1), rbac.DefaultRule)
		}
		for _, name := range names {
			r, err := ruleOf(name, s.GetPolicies()[name])
			if err != nil {
				return nil, fmt.Errorf("RBAC policy %q: %w", name, err)
			}
			*into = append(*into, r)
		}
	}
	return p, nil
}

func ruleOf(name string, pol *rbacconfigv3.Policy) (rbac.Rule, error) {
	if pol.GetCondition() != nil || pol.GetCheckedCondition() != nil {
		return rbac.Rule{}, fmt.Errorf("CEL conditions are not supported")
	}
	r := rbac.Rule{Name: name}
	for i, pr := range pol.GetPrincipals() {
		p, err := principalOf(pr)
		if err != nil {
			return rbac.Rule{}, fmt.Errorf("principal %d: %w", i, err)
		}
		r.Principals = append(r.Principals, p)
	}
	for i, pe := range pol.GetPermissions() {
		p, err := permissionOf(pe)
		if err != nil {
			return rbac.Rule{}, fmt.Errorf("permission %d: %w", i, err)
		}
		r.Permissions = append(r.Permissions, p)
	}
	return r, nil
}

func principalOf(pr *rbacconfigv3.Principal) (rbac.Principal, error) {
	switch id := pr.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		return rbac.Principal{Any: id.Any}, nil
	case *rbacconfigv3.Principal_Authenticated_:
		p := rbac.Principal{Authenticated: true}
		m := id.Authenticated.GetPrincipalName()
		if m == nil {
			return p, nil
		}
		if m.GetIgnoreCase() {
			return p, fmt.Errorf("authenticated.principal_name with ignore_case is not supported")
		}
		switch mp := m.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if mp.Exact == "" {
				return p, nil // Envoy: an empty exact name matches any authenticated peer
			}
			p.ID = mp.Exact
		case *matcherv3.StringMatcher_Prefix:
			p.IDPrefix = mp.Prefix
		default:
			return p, fmt.Errorf("authenticated.principal_name supports exact and prefix matches only")
		}
		return p, nil
	case *rbacconfigv3.Principal_OrIds:
		ps, err := principalsOf(id.OrIds.GetIds())
		return rbac.Principal{Or: nonNil(ps)}, err
	case *rbacconfigv3.Principal_AndIds:
		ps, err := principalsOf(id.AndIds.GetIds())
		return rbac.Principal{And: nonNil(ps)}, err
	case *rbacconfigv3.Principal_NotId:
		p, err := principalOf(id.NotId)
		return rbac.Principal{Not: &p}, err
	case nil:
		return rbac.Principal{}, fmt.Errorf("no identifier")
	default:
		return rbac.Principal{}, fmt.Errorf("principal %T is not supported (any, authenticated, or_ids, and_ids, not_id)", id)
	}
}

func principalsOf(in []*rbacconfigv3.Principal) ([]rbac.Principal, error) {
	out := make([]rbac.Principal, 0, len(in))
	for i, pr := range in {
		p, err := principalOf(pr)
		if err != nil {
			return nil, fmt.Errorf("%d: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// nonNil keeps an empty set distinguishable from "not set".
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func permissionOf(pe *rbacconfigv3.Permission) (rbac.Permission, error) {
	switch r := pe.GetRule().(type) {
	case *rbacconfigv3.Permission_Any:
		return rbac.Permission{Any: r.Any}, nil
	case *rbacconfigv3.Permission_Header:
		h, err := headerOf(r.Header)
		return rbac.Permission{Header: h}, err
	case *rbacconfigv3.Permission_UrlPath:
		m := r.UrlPath.GetPath()
		if m == nil {
			return rbac.Permission{}, fmt.Errorf("url_path without a path matcher")
		}
		sm, err := stringMatchOf(m)
		return rbac.Permission{Path: &sm}, err
	case *rbacconfigv3.Permission_OrRules:
		ps, err := permissionsOf(r.OrRules.GetRules())
		return rbac.Permission{Or: nonNil(ps)}, err
	case *rbacconfigv3.Permission_AndRules:
		ps, err := permissionsOf(r.AndRules.GetRules())
		return rbac.Permission{And: nonNil(ps)}, err
	case *rbacconfigv3.Permission_NotRule:
		p, err := permissionOf(r.NotRule)
		return rbac.Permission{Not: &p}, err
	case nil:
		return rbac.Permission{}, fmt.Errorf("no rule")
	default:
		return rbac.Permission{}, fmt.Errorf("permission %T is not supported (any, header, url_path, and_rules, or_rules, not_rule)", r)
	}
}

func permissionsOf(in []*rbacconfigv3.Permission) ([]rbac.Permission, error) {
	out := make([]rbac.Permission, 0, len(in))
	for i, pe := range in {
		p, err := permissionOf(pe)
		if err != nil {
			return nil, fmt.Errorf("%d: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func headerOf(h *routev3.HeaderMatcher) (*rbac.HeaderMatch, error) {
	name := strings.ToLower(h.GetName())
	if name == "" {
		return nil, fmt.Errorf("header matcher without a name")
	}
	out := &rbac.HeaderMatch{Name: name, Invert: h.GetInvertMatch()}
	if !strings.HasPrefix(name, ":") {
		out.Name = http.CanonicalHeaderKey(name)
	} else if name != ":method" && name != ":authority" && name != ":path" {
		return nil, fmt.Errorf("header %s: pseudo-headers other than :method, :authority, :path are not supported", name)
	}
	if h.GetTreatMissingHeaderAsEmpty() {
		return nil, fmt.Errorf("header %s: treat_missing_header_as_empty is not supported", name)
	}
	var err error
	switch m := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		out.Present = true
		if !m.PresentMatch {
			out.Invert = !out.Invert
		}
	case *routev3.HeaderMatcher_StringMatch:
		out.Match, err = stringMatchOf(m.StringMatch)
	case *routev3.HeaderMatcher_ExactMatch:
		out.Match = rbac.StringMatch{Exact: &m.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		out.Match = rbac.StringMatch{Prefix: m.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		out.Match = rbac.StringMatch{Suffix: m.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		out.Match = rbac.StringMatch{Contains: m.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		out.Match.Regex, err = compileRegex(m.SafeRegexMatch.GetRegex())
	default:
		return nil, fmt.Errorf("header %s: match %T is not supported", name, m)
	}
	if err != nil {
		return nil, fmt.Errorf("header %s: %w", name, err)
	}
	return out, nil
}

func stringMatchOf(m *matcherv3.StringMatcher) (rbac.StringMatch, error) {
	out := rbac.StringMatch{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Exact = &p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Prefix = p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Suffix = p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Contains = p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if m.GetIgnoreCase() {
			return out, fmt.Errorf("ignore_case with safe_regex is not supported")
		}
		re, err := compileRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return out, err
		}
		out.Regex = re
	default:
		return out, fmt.Errorf("string match %T is not supported", p)
	}
	if out.Exact == nil && out.Prefix == "" && out.Suffix == "" && out.Contains == "" && out.Regex == nil {
		return out, fmt.Errorf("empty string match")
	}
	return out, nil
}

// compileRegex compiles an RE2 regex that must match the whole value, as
// Envoy's safe_regex does.
func compileRegex(s string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + s + `)$`)
	if err != nil {
		return nil, fmt.Errorf("safe_regex %q: %w", s, err)
	}
	return re, nil
}
