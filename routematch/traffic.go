package routematch

import (
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// FaultFilter is the name under which a route's typed_per_filter_config
// carries its fault injection (the standard fault filter's name).
const FaultFilter = "envoy.filters.http.fault"

// Fraction is Envoy's FractionalPercent: Numerator out of Denominator
// (100, 10,000 or 1,000,000); a numerator over the denominator is all.
type Fraction struct {
	Numerator, Denominator uint32
}

// All is 100%.
var All = Fraction{Numerator: 100, Denominator: 100}

// Hit says whether a request drawn with the uniform random number rnd is
// in the fraction (Envoy's featureEnabled: rnd mod denominator below the
// numerator).
func (f Fraction) Hit(rnd uint64) bool {
	if f.Denominator == 0 {
		return false
	}
	return rnd%uint64(f.Denominator) < uint64(f.Numerator)
}

func (f Fraction) String() string {
	return strconv.FormatFloat(100*float64(f.Numerator)/float64(max(f.Denominator, 1)), 'g', -1, 64) + "%"
}

func compileFraction(p *typev3.FractionalPercent) (Fraction, error) {
	f := Fraction{Numerator: p.GetNumerator()}
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		f.Denominator = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		f.Denominator = 10000
	case typev3.FractionalPercent_MILLION:
		f.Denominator = 1000000
	default:
		return f, fmt.Errorf("denominator: %v is not known", p.GetDenominator())
	}
	return f, nil
}

// Fault is a route's fault injection (Envoy's HTTPFault): a delay, then
// an abort, each for its fraction of the requests the fault applies to
// (those with the fault's headers, sent to its upstream cluster if it
// names one), at most MaxActive at a time when set.
type Fault struct {
	// Delay is the fixed delay of DelayFraction of the requests (none
	// when DelayFraction is zero).
	Delay         time.Duration
	DelayFraction Fraction
	// AbortStatus (an HTTP status) or AbortGRPC (a gRPC status code, for
	// any request: Envoy answers it as a gRPC trailers-only response) is
	// the answer of AbortFraction of the requests; AbortGRPC is -1 for an
	// HTTP abort.
	AbortStatus   int
	AbortGRPC     int
	AbortFraction Fraction
	// UpstreamCluster, when set, limits the fault to requests routed to
	// that cluster.
	UpstreamCluster string
	// MaxActive bounds the requests being faulted at once (0: no bound).
	MaxActive uint32

	headers []headerMatch
	active  atomic.Int64
}

// Applies says whether the fault's header conditions hold for r and it is
// routed to cluster.
func (f *Fault) Applies(r *http.Request, cluster string) bool {
	if f.UpstreamCluster != "" && f.UpstreamCluster != cluster {
		return false
	}
	for i := range f.headers {
		if !f.headers[i].matches(r) {
			return false
		}
	}
	return true
}

// Begin takes a slot under MaxActive for a faulted request; false means
// the bound is reached and the request goes unfaulted. Call End once for
// each true.
func (f *Fault) Begin() bool {
	if f.MaxActive == 0 {
		return true
	}
	if f.active.Add(1) > int64(f.MaxActive) {
		f.active.Add(-1)
		return false
	}
	return true
}

// End releases a slot taken by Begin.
func (f *Fault) End() {
	if f.MaxActive != 0 {
		f.active.Add(-1)
	}
}

// compileFault reads a fault filter's per-route config (an HTTPFault,
// possibly inside a route FilterConfig); nil when it injects nothing.
func compileFault(a *anypb.Any) (*Fault, error) {
	if a.MessageIs(&routev3.FilterConfig{}) {
		var fc routev3.FilterConfig
		if err := a.UnmarshalTo(&fc); err != nil {
			return nil, err
		}
		if fc.GetDisabled() {
			return nil, nil
		}
		a = fc.GetConfig()
	}
	var hf faultv3.HTTPFault
	if err := a.UnmarshalTo(&hf); err != nil {
		return nil, fmt.Errorf("want an HTTPFault: %w", err)
	}
	switch {
	case len(hf.GetDownstreamNodes()) > 0:
		return nil, fmt.Errorf("downstream_nodes: not supported")
	case hf.GetResponseRateLimit() != nil:
		return nil, fmt.Errorf("response_rate_limit: not supported")
	}
	f := &Fault{AbortGRPC: -1, UpstreamCluster: hf.GetUpstreamCluster(), MaxActive: hf.GetMaxActiveFaults().GetValue()}
	if hf.GetMaxActiveFaults() != nil && f.MaxActive == 0 {
		return nil, nil // max_active_faults 0: never more than none at once
	}
	if d := hf.GetDelay(); d != nil {
		if d.GetHeaderDelay() != nil {
			return nil, fmt.Errorf("delay.header_delay: not supported")
		}
		fd := d.GetFixedDelay()
		if fd == nil {
			return nil, fmt.Errorf("delay.fixed_delay: missing")
		}
		if err := fd.CheckValid(); err != nil || fd.AsDuration() < 0 {
			return nil, fmt.Errorf("delay.fixed_delay: %v is not a valid duration", fd)
		}
		f.Delay = fd.AsDuration()
		frac, err := compileFraction(d.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("delay.percentage: %w", err)
		}
		f.DelayFraction = frac
	}
	if ab := hf.GetAbort(); ab != nil {
		switch e := ab.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if e.HttpStatus < 200 || e.HttpStatus >= 600 {
				return nil, fmt.Errorf("abort.http_status: %d, want 200-599", e.HttpStatus)
			}
			f.AbortStatus = int(e.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			if e.GrpcStatus > 16 {
				return nil, fmt.Errorf("abort.grpc_status: %d is not a gRPC status code (0-16)", e.GrpcStatus)
			}
			f.AbortGRPC, f.AbortStatus = int(e.GrpcStatus), http.StatusOK
		case *faultv3.FaultAbort_HeaderAbort_:
			return nil, fmt.Errorf("abort.header_abort: not supported")
		default:
			return nil, fmt.Errorf("abort: missing http_status or grpc_status")
		}
		if ab.GetResponseBody() != "" {
			return nil, fmt.Errorf("abort.response_body: not supported")
		}
		frac, err := compileFraction(ab.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("abort.percentage: %w", err)
		}
		f.AbortFraction = frac
	}
	for i, h := range hf.GetHeaders() {
		hm, err := compileHeader(h)
		if err != nil {
			return nil, fmt.Errorf("headers[%d] %q: %w", i, h.GetName(), err)
		}
		f.headers = append(f.headers, hm)
	}
	if f.DelayFraction.Numerator == 0 && f.AbortFraction.Numerator == 0 {
		return nil, nil // nothing to inject
	}
	return f, nil
}

// Mirror is one of a route's request_mirror_policies: a copy of Fraction
// of the requests goes to Cluster, with "-shadow" appended to its host
// unless NoHostSuffix.
type Mirror struct {
	Cluster      string
	Fraction     Fraction
	NoHostSuffix bool
}

func compileMirrors(ps []*routev3.RouteAction_RequestMirrorPolicy) ([]Mirror, error) {
	var out []Mirror
	for i, p := range ps {
		switch {
		case p.GetClusterHeader() != "":
			return nil, fmt.Errorf("request_mirror_policies[%d]: cluster_header: not supported", i)
		case p.GetCluster() == "":
			return nil, fmt.Errorf("request_mirror_policies[%d]: cluster: empty", i)
		case len(p.GetRequestHeadersMutations()) > 0:
			return nil, fmt.Errorf("request_mirror_policies[%d] %q: request_headers_mutations: not supported", i, p.GetCluster())
		}
		m := Mirror{Cluster: p.GetCluster(), Fraction: All, NoHostSuffix: p.GetDisableShadowHostSuffixAppend()}
		if rf := p.GetRuntimeFraction(); rf != nil {
			if rf.GetDefaultValue() == nil {
				return nil, fmt.Errorf("request_mirror_policies[%d] %q: runtime_fraction.default_value: missing", i, p.GetCluster())
			}
			f, err := compileFraction(rf.GetDefaultValue())
			if err != nil {
				return nil, fmt.Errorf("request_mirror_policies[%d] %q: runtime_fraction.default_value: %w", i, p.GetCluster(), err)
			}
			m.Fraction = f
		}
		out = append(out, m)
	}
	return out, nil
}

// ShadowHost is the Host (authority) a mirrored copy of a request to host
// carries: "-shadow" appended to the host name, before any port, as Envoy
// does.
func ShadowHost(host string) string {
	if h, ok := stripPort(host); ok {
		return h + "-shadow" + host[len(h):]
	}
	return host + "-shadow"
}

type hashKind uint8

const (
	hashHeader hashKind = iota
	hashCookie
	hashSourceIP
	hashQuery
)

// HashPolicy is one of a route's hash_policy entries: what a request's
// hash for ring hash and Maglev balancing is computed from.
type HashPolicy struct {
	kind hashKind
	// name is the header (canonical), cookie or query parameter.
	name     string
	rewrite  *RegexRewrite
	terminal bool
	// A cookie absent from the request is generated when ttlSet: with
	// that Max-Age (0: a session cookie) and path.
	ttl    time.Duration
	ttlSet bool
	path   string
	attrs  []string
}

func compileHashPolicies(ps []*routev3.RouteAction_HashPolicy) ([]HashPolicy, error) {
	var out []HashPolicy
	for i, p := range ps {
		hp := HashPolicy{terminal: p.GetTerminal()}
		switch s := p.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			name := s.Header.GetHeaderName()
			if name == "" || strings.HasPrefix(name, ":") && name != ":authority" && name != ":path" && name != ":method" {
				return nil, fmt.Errorf("hash_policy[%d].header.header_name: %q is not supported", i, name)
			}
			hp.kind, hp.name = hashHeader, textproto.CanonicalMIMEHeaderKey(name)
			if strings.HasPrefix(name, ":") {
				hp.name = name
			}
			if rr := s.Header.GetRegexRewrite(); rr != nil {
				rw, err := compileRegexRewrite(rr)
				if err != nil {
					return nil, fmt.Errorf("hash_policy[%d].header.regex_rewrite: %w", i, err)
				}
				hp.rewrite = rw
			}
		case *routev3.RouteAction_HashPolicy_Cookie_:
			c := s.Cookie
			if c.GetName() == "" {
				return nil, fmt.Errorf("hash_policy[%d].cookie.name: empty", i)
			}
			hp.kind, hp.name, hp.path = hashCookie, c.GetName(), c.GetPath()
			if c.GetTtl() != nil {
				if err := c.GetTtl().CheckValid(); err != nil || c.GetTtl().AsDuration() < 0 {
					return nil, fmt.Errorf("hash_policy[%d].cookie.ttl: %v is not a valid duration", i, c.GetTtl())
				}
				hp.ttl, hp.ttlSet = c.GetTtl().AsDuration(), true
			}
			for j, a := range c.GetAttributes() {
				if a.GetName() == "" || strings.ContainsAny(a.GetName()+a.GetValue(), ";\r\n") {
					return nil, fmt.Errorf("hash_policy[%d].cookie.attributes[%d]: %q=%q is not a cookie attribute", i, j, a.GetName(), a.GetValue())
				}
				attr := a.GetName()
				if a.GetValue() != "" {
					attr += "=" + a.GetValue()
				}
				hp.attrs = append(hp.attrs, attr)
			}
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			if !s.ConnectionProperties.GetSourceIp() {
				continue // hashes nothing
			}
			hp.kind = hashSourceIP
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			if s.QueryParameter.GetName() == "" {
				return nil, fmt.Errorf("hash_policy[%d].query_parameter.name: empty", i)
			}
			hp.kind, hp.name = hashQuery, s.QueryParameter.GetName()
		case *routev3.RouteAction_HashPolicy_FilterState_:
			return nil, fmt.Errorf("hash_policy[%d].filter_state: not supported", i)
		default:
			return nil, fmt.Errorf("hash_policy[%d]: missing (header, cookie, connection_properties or query_parameter)", i)
		}
		out = append(out, hp)
	}
	return out, nil
}

// Hash is a request's hash under the route's hash_policy, as Envoy
// computes it: each policy that yields a value (the xxHash64 of a
// header's value — of its sorted values concatenated when it has several
// —, of a cookie, of the source IP, of a query parameter) is folded in
// (the hash so far rotated left by one, XORed with the new one); a
// terminal policy that yielded one ends the list. ok is false when none
// yielded anything: the balancer then picks at random. remoteIP is the
// downstream address's IP (for source_ip). When a cookie policy with a
// ttl finds no cookie, it generates one (its value the hex xxHash64 of
// remoteAddr) and returns it in set, for the response.
func (rt *Route) Hash(r *http.Request, remoteAddr string) (h uint64, ok bool, set *http.Cookie) {
	for i := range rt.HashPolicies {
		hp := &rt.HashPolicies[i]
		v, got, c := hp.evaluate(r, remoteAddr)
		if c != nil {
			set = c
		}
		if got {
			if ok {
				h = h<<1 | h>>63
			}
			h ^= v
			ok = true
		}
		if hp.terminal && ok {
			break
		}
	}
	return h, ok, set
}

func (hp *HashPolicy) evaluate(r *http.Request, remoteAddr string) (uint64, bool, *http.Cookie) {
	switch hp.kind {
	case hashHeader:
		var vs []string
		switch hp.name {
		case ":authority":
			vs = []string{r.Host}
		case ":path":
			vs = []string{r.URL.RequestURI()}
		case ":method":
			vs = []string{r.Method}
		default:
			vs = r.Header[hp.name]
		}
		switch len(vs) {
		case 0:
			return 0, false, nil
		case 1:
			return xxhash.Sum64String(hp.rewritten(vs[0])), true, nil
		}
		sorted := make([]string, len(vs))
		for i, v := range vs {
			sorted[i] = hp.rewritten(v)
		}
		slices.Sort(sorted)
		d := xxhash.New()
		for _, v := range sorted {
			_, _ = d.WriteString(v)
		}
		return d.Sum64(), true, nil
	case hashCookie:
		if c, err := r.Cookie(hp.name); err == nil {
			return xxhash.Sum64String(c.Value), true, nil
		}
		if !hp.ttlSet {
			return 0, false, nil
		}
		v := strconv.FormatUint(xxhash.Sum64String(remoteAddr), 16)
		c := &http.Cookie{Name: hp.name, Value: v, Path: hp.path, HttpOnly: true}
		if hp.ttl > 0 {
			c.MaxAge = int((hp.ttl + time.Second - 1) / time.Second)
		}
		for _, a := range hp.attrs {
			c.Unparsed = append(c.Unparsed, a)
		}
		return xxhash.Sum64String(v), true, c
	case hashSourceIP:
		ip := remoteAddr
		if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
			ip = h
		}
		if ip == "" {
			return 0, false, nil
		}
		return xxhash.Sum64String(ip), true, nil
	case hashQuery:
		v, ok := queryValue(r.URL.RawQuery, hp.name)
		if !ok {
			return 0, false, nil
		}
		return xxhash.Sum64String(v), true, nil
	}
	return 0, false, nil
}

func (hp *HashPolicy) rewritten(v string) string {
	if hp.rewrite == nil {
		return v
	}
	return hp.rewrite.Apply(v)
}
