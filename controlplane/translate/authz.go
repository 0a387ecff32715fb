package translate

import (
	"fmt"
	"regexp"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Authorization is what the translation needs of control.authorization:
// the per-callee entries and how service names become SPIFFE IDs.
type Authorization struct {
	// Services are the callees' entries by service name.
	Services map[string]config.Authorization
	// TrustDomain and Namespace (control.ca) name the callers: a service
	// web is spiffe://<trust_domain>/ns/<namespace>/svc/web, a Kubernetes
	// service web.shop spiffe://<trust_domain>/ns/shop/svc/web.
	TrustDomain, Namespace string
}

// NewAuthorization indexes cfg's authorization entries by service.
func NewAuthorization(c config.Control) Authorization {
	a := Authorization{Services: make(map[string]config.Authorization, len(c.Authorization)),
		TrustDomain: c.CA.TrustDomain, Namespace: c.CA.Namespace}
	for _, e := range c.Authorization {
		a.Services[e.Service] = e
	}
	return a
}

// authzInputs is one callee's entry with the naming it is translated
// under; the zero value means no authorization.
type authzInputs struct {
	entry                  *config.Authorization
	trustDomain, namespace string
}

func (a Authorization) inputs(service string) authzInputs {
	e, ok := a.Services[service]
	if !ok {
		return authzInputs{}
	}
	return authzInputs{entry: &e, trustDomain: a.TrustDomain, namespace: a.Namespace}
}

// rbacSets turns an entry into Envoy's two RBAC configs: the DENY set
// (nil without deny rules), evaluated first, and the ALLOW set (nil when
// everything not denied is served). Under default allow the ALLOW set
// ends with a catch-all rule named "default", so that the allow rules
// still name what they served. l4 keeps only what a connection can be
// judged on: an allow rule with HTTP conditions is left out (it can
// never match a connection), a deny rule keeps its callers and drops its
// HTTP conditions, so a TCP service fails closed.
func rbacSets(in authzInputs, l4 bool) (deny, allow *rbacconfigv3.RBAC, err error) {
	if in.entry == nil {
		return nil, nil, nil
	}
	e := in.entry
	denySet := map[string]*rbacconfigv3.Policy{}
	allowSet := map[string]*rbacconfigv3.Policy{}
	for i, r := range e.Rules {
		httpConds := len(r.Methods) > 0 || len(r.Paths) > 0 || len(r.Headers) > 0
		if l4 && httpConds && r.Action == config.AuthzAllow {
			continue
		}
		principals, err := rbacPrincipals(in, r.From)
		if err != nil {
			return nil, nil, fmt.Errorf("authorization of %s: rule %s: %w", e.Service, r.RuleName(i), err)
		}
		perm := &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
		if httpConds && !l4 {
			if perm, err = rbacPermission(r); err != nil {
				return nil, nil, fmt.Errorf("authorization of %s: rule %s: %w", e.Service, r.RuleName(i), err)
			}
		}
		pol := &rbacconfigv3.Policy{Permissions: []*rbacconfigv3.Permission{perm}, Principals: principals}
		if r.Action == config.AuthzDeny {
			denySet[r.RuleName(i)] = pol
		} else {
			allowSet[r.RuleName(i)] = pol
		}
	}
	if len(denySet) > 0 {
		deny = &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_DENY, Policies: denySet}
	}
	if e.Default == config.AuthzDeny || len(allowSet) > 0 {
		if e.Default != config.AuthzDeny {
			allowSet[config.AuthzDefaultRule] = &rbacconfigv3.Policy{
				Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
				Principals:  []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
			}
		}
		allow = &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: allowSet}
	}
	return deny, allow, nil
}

// rbacPrincipals: no from is any caller; "*" any authenticated one; a
// service its SPIFFE ID (the URI SAN Envoy matches principal_name on).
func rbacPrincipals(in authzInputs, from []string) ([]*rbacconfigv3.Principal, error) {
	if from == nil {
		return []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}}, nil
	}
	out := make([]*rbacconfigv3.Principal, 0, len(from))
	for _, f := range from {
		auth := &rbacconfigv3.Principal_Authenticated{}
		if f != config.AuthzAnyCaller {
			id, err := identity.ForService(in.trustDomain, in.namespace, f)
			if err != nil {
				return nil, fmt.Errorf("caller %s: %w", f, err)
			}
			auth.PrincipalName = exactString(id.String())
		}
		out = append(out, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: auth}})
	}
	return out, nil
}

// rbacPermission is a rule's HTTP conditions, all of which must hold: one
// of its methods, one of its path prefixes, every header.
func rbacPermission(r config.AuthzRule) (*rbacconfigv3.Permission, error) {
	var and []*rbacconfigv3.Permission
	if len(r.Methods) > 0 {
		or := make([]*rbacconfigv3.Permission, len(r.Methods))
		for i, m := range r.Methods {
			or[i] = headerPermission(&routev3.HeaderMatcher{Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exactString(m)}})
		}
		and = append(and, orPermission(or))
	}
	if len(r.Paths) > 0 {
		or := make([]*rbacconfigv3.Permission, len(r.Paths))
		for i, p := range r.Paths {
			or[i] = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
				Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}}}}}
		}
		and = append(and, orPermission(or))
	}
	for _, h := range r.Headers {
		hm := &routev3.HeaderMatcher{Name: strings.ToLower(h.Name)}
		switch {
		case h.Present:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		case h.Regex != "":
			if _, err := regexp.Compile(h.Regex); err != nil {
				return nil, fmt.Errorf("header %s: regex: %w", h.Name, err)
			}
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: h.Regex}}}}
		case h.Prefix != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.Prefix}}}
		default:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: exactString(h.Exact)}
		}
		and = append(and, headerPermission(hm))
	}
	if len(and) == 1 {
		return and[0], nil
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: and}}}, nil
}

func headerPermission(h *routev3.HeaderMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: h}}
}

func orPermission(or []*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	if len(or) == 1 {
		return or[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: or}}}
}

func exactString(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// rbacHTTPFilters are the inbound listener's RBAC HTTP filters, to go
// first: DENY, then ALLOW (either may be absent).
func rbacHTTPFilters(in authzInputs) ([]*hcmv3.HttpFilter, error) {
	deny, allow, err := rbacSets(in, false)
	if err != nil {
		return nil, err
	}
	var out []*hcmv3.HttpFilter
	for _, set := range []struct {
		rules  *rbacconfigv3.RBAC
		prefix string
	}{{deny, "inbound_rbac_deny_"}, {allow, "inbound_rbac_allow_"}} {
		if set.rules == nil {
			continue
		}
		cfg, err := anypb.New(&rbachttpv3.RBAC{Rules: set.rules, RulesStatPrefix: set.prefix})
		if err != nil {
			return nil, err
		}
		out = append(out, &hcmv3.HttpFilter{Name: wire.RBACFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}})
	}
	return out, nil
}

// rbacNetworkConfigs are a TCP inbound listener's RBAC network filter
// configs, to go before its TCP proxy: DENY, then ALLOW.
func rbacNetworkConfigs(in authzInputs) ([]*anypb.Any, error) {
	deny, allow, err := rbacSets(in, true)
	if err != nil {
		return nil, err
	}
	var out []*anypb.Any
	for _, set := range []struct {
		rules  *rbacconfigv3.RBAC
		prefix string
	}{{deny, "inbound_rbac_deny"}, {allow, "inbound_rbac_allow"}} {
		if set.rules == nil {
			continue
		}
		cfg, err := anypb.New(&rbacnetv3.RBAC{Rules: set.rules, StatPrefix: set.prefix})
		if err != nil {
			return nil, err
		}
		out = append(out, cfg)
	}
	return out, nil
}

// inboundListenerFor is a node's inbound listener: the HTTP one with the
// RBAC filters first, or for a tcp app a TCP proxy to the local app after
// the RBAC network filters.
func inboundListenerFor(in ownInputs) (*listenerv3.Listener, error) {
	addr := cmpOr(in.node.InboundAddr, wire.DefaultInboundAddr)
	if in.protocol == config.AppProtocolTCP {
		cfgs, err := rbacNetworkConfigs(in.authz)
		if err != nil {
			return nil, err
		}
		return tcpInboundListener(addr, cfgs)
	}
	filters, err := rbacHTTPFilters(in.authz)
	if err != nil {
		return nil, err
	}
	return inboundListener(addr, in.policy, filters...)
}

// tcpInboundListener is a tcp app's inbound listener: the RBAC network
// filters, then a TCP proxy to the local app cluster.
func tcpInboundListener(addr string, rbac []*anypb.Any) (*listenerv3.Listener, error) {
	address, err := parseHostPort(addr)
	if err != nil {
		return nil, err
	}
	proxy, err := anypb.New(&tcpproxyv3.TcpProxy{
		StatPrefix:       "inbound",
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: wire.LocalAppCluster},
	})
	if err != nil {
		return nil, err
	}
	filters := make([]*listenerv3.Filter, 0, len(rbac)+1)
	for _, cfg := range rbac {
		filters = append(filters, &listenerv3.Filter{Name: wire.RBACNetworkFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}})
	}
	filters = append(filters, &listenerv3.Filter{Name: wire.TCPProxy, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: proxy}})
	return &listenerv3.Listener{
		Name:         wire.InboundListener,
		Address:      address,
		FilterChains: []*listenerv3.FilterChain{{Filters: filters}},
	}, nil
}
