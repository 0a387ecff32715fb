package translate

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/wire"
)

// This file is the one translation of a configured route (config.Route)
// into an Envoy route, for the gateway's routes (gateway.go) and for a
// service's own (traffic.go): match, action (forward, split, redirect,
// direct response), header changes, mirror and fault.

// routeCtx is what translating a route needs to know of where it goes.
type routeCtx struct {
	// owner is the service whose routes these are ("" on a gateway): a
	// target without a service is one of the owner's, and a route
	// without an action goes to defaultCluster.
	owner, defaultCluster string
	// api selects the gRPC proxyless variant (no host-selection retry
	// predicate; the timeout is also max_stream_duration).
	api bool
	// hash sets the targets' hash_policy (a consistent-hash load
	// balancer's keys); gateways do not hash.
	hash bool
	// policyOf is the policy of a cluster (a service's or a subset's).
	policyOf func(cluster string) config.Policy
	// ensure is told every cluster the route names.
	ensure func(cluster string) error
}

// routeName is a configured route's name, default route-<index>.
func routeName(cr *config.Route, i int) string {
	if cr.Name != "" {
		return cr.Name
	}
	return "route-" + strconv.Itoa(i)
}

// targetCluster is the cluster of a route target: service (the owner
// when empty) or its subset.
func (rc *routeCtx) targetCluster(service, subset string) string {
	service = cmpOr(service, rc.owner)
	if subset == "" {
		return service
	}
	return wire.SubsetCluster(service, subset)
}

// buildRoute translates one configured route.
func buildRoute(cr *config.Route, name string, rc *routeCtx) (*routev3.Route, error) {
	r := &routev3.Route{Name: name, Match: routeMatch(cr)}
	switch {
	case cr.Redirect.Set():
		r.Action = &routev3.Route_Redirect{Redirect: routeRedirect(cr)}
	case cr.DirectResponse.Status != 0:
		r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: uint32(cr.DirectResponse.Status),
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: cr.DirectResponse.Body}},
		}}
	default:
		a, err := routeForward(cr, rc)
		if err != nil {
			return nil, err
		}
		r.Action = &routev3.Route_Route{Route: a}
	}
	for _, h := range sortedKeys(cr.HeadersToAdd) {
		r.RequestHeadersToAdd = append(r.RequestHeadersToAdd, setHeader(h, cr.HeadersToAdd[h]))
	}
	for _, h := range sortedKeys(cr.ResponseHeadersToAdd) {
		r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, setHeader(h, cr.ResponseHeadersToAdd[h]))
	}
	r.RequestHeadersToRemove = lowerAll(cr.HeadersToRemove)
	r.ResponseHeadersToRemove = lowerAll(cr.ResponseHeadersToRemove)
	if cr.Fault.Set() {
		f, err := deterministicAny(routeFault(cr.Fault))
		if err != nil {
			return nil, fmt.Errorf("fault: %w", err)
		}
		r.TypedPerFilterConfig = map[string]*anypb.Any{wire.FaultFilter: f}
	}
	return r, nil
}

func lowerAll(in []string) []string {
	var out []string
	for _, s := range in {
		out = append(out, strings.ToLower(s))
	}
	return out
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	// Envoy reads % as the start of a substitution: %% is a literal %.
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: strings.ToLower(k), Value: strings.ReplaceAll(v, "%", "%%")},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func routeMatch(cr *config.Route) *routev3.RouteMatch {
	m := &routev3.RouteMatch{}
	switch {
	case cr.Path != "":
		m.PathSpecifier = &routev3.RouteMatch_Path{Path: cr.Path}
	case cr.PathRegex != "":
		m.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: cr.PathRegex}}
	default:
		m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: cmpOr(cr.PathPrefix, "/")}
	}
	switch len(cr.Methods) {
	case 0:
	case 1:
		m.Headers = append(m.Headers, exactHeader(":method", cr.Methods[0]))
	default:
		quoted := make([]string, len(cr.Methods))
		for i, s := range cr.Methods {
			quoted[i] = regexp.QuoteMeta(s)
		}
		m.Headers = append(m.Headers, &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: strings.Join(quoted, "|")}}}}})
	}
	m.Headers = append(m.Headers, headerMatchers(cr.Headers)...)
	for _, q := range cr.Query {
		qm := &routev3.QueryParameterMatcher{Name: q.Name}
		switch {
		case q.Exact != "":
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: q.Exact}}}
		case q.Regex != "":
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: q.Regex}}}}
		default:
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		}
		m.QueryParameters = append(m.QueryParameters, qm)
	}
	return m
}

func headerMatchers(hs []config.HeaderMatch) []*routev3.HeaderMatcher {
	var out []*routev3.HeaderMatcher
	for _, h := range hs {
		// An inverted match also holds for a missing header ("not yes"
		// includes absent), which Envoy needs told.
		hm := &routev3.HeaderMatcher{Name: strings.ToLower(h.Name), InvertMatch: h.Invert, TreatMissingHeaderAsEmpty: h.Invert && (h.Exact != "" || h.Prefix != "" || h.Regex != "")}
		switch {
		case h.Exact != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.Exact}}}
		case h.Prefix != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.Prefix}}}
		case h.Regex != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: h.Regex}}}}
		default:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: !h.Absent}
		}
		out = append(out, hm)
	}
	return out
}

func exactHeader(name, v string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}}
}

func routeRedirect(cr *config.Route) *routev3.RedirectAction {
	rd := cr.Redirect
	a := &routev3.RedirectAction{HostRedirect: rd.Host, PortRedirect: uint32(rd.Port), StripQuery: rd.StripQuery}
	if rd.Scheme != "" {
		a.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: rd.Scheme}
	}
	switch {
	case rd.Path != "":
		a.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: rd.Path}
	case rd.Prefix != "":
		a.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: rd.Prefix}
	}
	switch rd.Code {
	case 302:
		a.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		a.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		a.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		a.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	}
	return a
}

// routeForward is a route to a cluster or a weighted split; timeout,
// retries and hashing default to the (first) target's policy, as the
// service's own catch-all route has them.
func routeForward(cr *config.Route, rc *routeCtx) (*routev3.RouteAction, error) {
	a := &routev3.RouteAction{}
	var first string
	if len(cr.Split) > 0 {
		wc := &routev3.WeightedCluster{}
		for _, s := range cr.Split {
			c := rc.targetCluster(s.Service, s.Subset)
			if first == "" {
				first = c
			}
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: c, Weight: wrapperspb.UInt32(uint32(s.Weight))})
			if err := rc.ensure(c); err != nil {
				return nil, err
			}
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	} else {
		first = rc.defaultCluster
		if cr.Service != "" || cr.Subset != "" {
			first = rc.targetCluster(cr.Service, cr.Subset)
		}
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: first}
		if err := rc.ensure(first); err != nil {
			return nil, err
		}
	}
	p := rc.policyOf(first)
	timeout := p.Timeout
	if cr.Timeout > 0 {
		timeout = cr.Timeout
	}
	a.Timeout = durationpb.New(timeout)
	if rc.api && timeout > 0 {
		a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(timeout)}
	}
	retries := p.Retries
	if cr.Retries.Set() {
		retries = config.Retries{Attempts: cr.Retries.Attempts, PerTryTimeout: cr.Retries.PerTryTimeout, RetryOn: cr.Retries.RetryOn}
		if len(retries.RetryOn) == 0 {
			retries.RetryOn = []string{"5xx", "connect-failure"}
		}
	}
	a.RetryPolicy = retryPolicy(retries, rc.api)
	if rc.hash {
		a.HashPolicy = hashPolicy(p.LoadBalancer)
	}
	switch {
	case cr.Rewrite != "":
		a.PrefixRewrite = cr.Rewrite
	case cr.RewriteRegex.Pattern != "":
		a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern: &matcherv3.RegexMatcher{Regex: cr.RewriteRegex.Pattern}, Substitution: cr.RewriteRegex.Substitution}
	}
	if cr.HostRewrite != "" {
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: cr.HostRewrite}
	}
	if m := cr.Mirror; m.Set() {
		c := rc.targetCluster(m.Service, m.Subset)
		if err := rc.ensure(c); err != nil {
			return nil, err
		}
		a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{
			Cluster:         c,
			RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: fraction(m.Percent)},
		}}
	}
	return a, nil
}

// fraction is a percentage (0 to 100, fractions allowed) as a
// FractionalPercent of a million.
func fraction(percent float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{
		Numerator:   uint32(math.Round(percent * 10_000)),
		Denominator: typev3.FractionalPercent_MILLION,
	}
}

// routeFault is a route's HTTPFault (typed_per_filter_config of
// wire.FaultFilter).
func routeFault(f config.RouteFault) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{Headers: headerMatchers(f.Headers)}
	if d := f.Delay; d != (config.FaultDelay{}) {
		out.Delay = &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Fixed)},
			Percentage:         fraction(d.Percent),
		}
	}
	if a := f.Abort; a != (config.FaultAbort{}) {
		out.Abort = &faultv3.FaultAbort{Percentage: fraction(a.Percent)}
		if a.GRPCStatus != 0 {
			out.Abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: uint32(a.GRPCStatus)}
		} else {
			out.Abort.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)}
		}
	}
	return out
}

// hashPolicy is what a consistent-hash load balancer hashes (nil for the
// other policies).
func hashPolicy(lb config.LoadBalancer) []*routev3.RouteAction_HashPolicy {
	if !lb.Hashed() {
		return nil
	}
	k := lb.Hash
	hp := &routev3.RouteAction_HashPolicy{}
	switch {
	case k.Header != "":
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: strings.ToLower(k.Header)}}
	case k.Cookie != "":
		c := &routev3.RouteAction_HashPolicy_Cookie{Name: k.Cookie}
		if k.CookieTTL > 0 {
			c.Ttl = durationpb.New(k.CookieTTL)
		}
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_Cookie_{Cookie: c}
	case k.SourceIP:
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}
	default:
		return nil
	}
	return []*routev3.RouteAction_HashPolicy{hp}
}
