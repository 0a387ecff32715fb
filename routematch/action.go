package routematch

import (
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func compileRegexRewrite(m *matcherv3.RegexMatchAndSubstitute) (*RegexRewrite, error) {
	re, err := regexp.Compile(m.GetPattern().GetRegex())
	if err != nil || m.GetPattern() == nil {
		return nil, fmt.Errorf("pattern: bad regex %q: %v", m.GetPattern().GetRegex(), err)
	}
	// Envoy's substitution refers to groups as \1; Go's Expand as ${1}.
	var b strings.Builder
	sub := m.GetSubstitution()
	for i := 0; i < len(sub); i++ {
		c := sub[i]
		switch {
		case c == '\\' && i+1 < len(sub) && sub[i+1] >= '0' && sub[i+1] <= '9':
			n := int(sub[i+1] - '0')
			if n > re.NumSubexp() {
				return nil, fmt.Errorf("substitution: \\%d but the pattern has %d groups", n, re.NumSubexp())
			}
			fmt.Fprintf(&b, "${%d}", n)
			i++
		case c == '\\' && i+1 < len(sub) && sub[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case c == '$':
			b.WriteString("$$")
		default:
			b.WriteByte(c)
		}
	}
	return &RegexRewrite{Pattern: re, Substitution: b.String()}, nil
}

// Apply rewrites s: every match of the pattern replaced.
func (rr *RegexRewrite) Apply(s string) string {
	return rr.Pattern.ReplaceAllString(s, rr.Substitution)
}

func compileRedirect(a *routev3.RedirectAction) (*Redirect, error) {
	rd := &Redirect{Host: a.GetHostRedirect(), Port: a.GetPortRedirect(), StripQuery: a.GetStripQuery()}
	switch s := a.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.Scheme = strings.ToLower(s.SchemeRedirect)
	}
	switch p := a.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		rd.Path = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		rd.PrefixRewrite = p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		rr, err := compileRegexRewrite(p.RegexRewrite)
		if err != nil {
			return nil, fmt.Errorf("regex_rewrite: %w", err)
		}
		rd.RegexRewrite = rr
	}
	switch a.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.Code = http.StatusMovedPermanently
	case routev3.RedirectAction_FOUND:
		rd.Code = http.StatusFound
	case routev3.RedirectAction_SEE_OTHER:
		rd.Code = http.StatusSeeOther
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.Code = http.StatusTemporaryRedirect
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.Code = http.StatusPermanentRedirect
	default:
		return nil, fmt.Errorf("response_code: %v is not known", a.GetResponseCode())
	}
	return rd, nil
}

func compileDirect(a *routev3.DirectResponseAction) (*DirectResponse, error) {
	if a.GetStatus() < 200 || a.GetStatus() > 599 {
		return nil, fmt.Errorf("status: %d, want 200-599", a.GetStatus())
	}
	if a.GetBodyFormat() != nil {
		return nil, fmt.Errorf("body_format: not supported")
	}
	d := &DirectResponse{Status: int(a.GetStatus())}
	switch b := a.GetBody().GetSpecifier().(type) {
	case nil:
	case *corev3.DataSource_InlineString:
		d.Body = []byte(b.InlineString)
	case *corev3.DataSource_InlineBytes:
		d.Body = b.InlineBytes
	default:
		return nil, fmt.Errorf("body: only inline_string and inline_bytes are supported, not %T", b)
	}
	return d, nil
}

// Pick returns the cluster a request goes to: the route's cluster, or for
// a weighted split the one whose share of the total weight holds
// rnd % total (the walk Envoy does), so equal rnd give equal picks.
func (rt *Route) Pick(rnd uint64) string {
	wc := rt.pick(rnd)
	if wc == nil {
		return rt.Cluster
	}
	return wc.Name
}

func (rt *Route) pick(rnd uint64) *WeightedCluster {
	if len(rt.Clusters) == 0 {
		return nil
	}
	v := rnd % rt.total
	for i := range rt.Clusters {
		w := uint64(rt.Clusters[i].Weight)
		if v < w {
			return &rt.Clusters[i]
		}
		v -= w
	}
	return &rt.Clusters[len(rt.Clusters)-1]
}

// TotalWeight is the sum of a weighted route's weights (0 otherwise).
func (rt *Route) TotalWeight() uint64 { return rt.total }

// RewritePath returns the path a forwarded request carries: prefix_rewrite
// replaces what the route's prefix (or exact path) matched, regex_rewrite
// every match of its pattern. It returns path itself when nothing changes.
func (rt *Route) RewritePath(path string) string {
	switch {
	case rt.PrefixRewrite != "":
		return rt.rewritePrefix(path, rt.PrefixRewrite)
	case rt.RegexRewrite != nil:
		return rt.RegexRewrite.Apply(path)
	}
	return path
}

func (rt *Route) rewritePrefix(path, with string) string {
	switch rt.path.kind {
	case pathPrefix, pathSeparatedPrefix:
		n := len(rt.path.value)
		if n > len(path) {
			n = len(path)
		}
		return with + path[n:]
	case pathExact:
		return with
	}
	return path
}

// Rewrite applies the route's path and host rewrites to a request about
// to be forwarded (r.URL.Path, r.URL.RawPath, r.Host).
func (rt *Route) Rewrite(r *http.Request) {
	if rt.PrefixRewrite != "" || rt.RegexRewrite != nil {
		old := r.URL.EscapedPath()
		if p := rt.RewritePath(old); p != old {
			setPath(r, p)
		}
	}
	if rt.HostRewrite != "" {
		r.Host = rt.HostRewrite
	}
}

func setPath(r *http.Request, escaped string) {
	p, err := url.PathUnescape(escaped)
	if err != nil {
		r.URL.Path, r.URL.RawPath = escaped, ""
		return
	}
	r.URL.Path, r.URL.RawPath = p, ""
	if r.URL.EscapedPath() != escaped {
		r.URL.RawPath = escaped
	}
}

// ApplyRequestHeaders applies the route's request header mutations
// (removals, then additions: the route's, its virtual host's and the
// route configuration's as Envoy orders them; then those of the picked
// weighted cluster, cluster = Pick's result).
func (rt *Route) ApplyRequestHeaders(h http.Header, cluster string) {
	rt.mut.applyRequest(h)
	if wc := rt.weighted(cluster); wc != nil {
		wc.mut.applyRequest(h)
	}
}

// ApplyResponseHeaders applies the route's response header mutations.
func (rt *Route) ApplyResponseHeaders(h http.Header, cluster string) {
	if wc := rt.weighted(cluster); wc != nil {
		wc.mut.applyResponse(h)
	}
	rt.mut.applyResponse(h)
}

// MutatesResponse reports whether ApplyResponseHeaders has anything to
// do for a request sent to cluster.
func (rt *Route) MutatesResponse(cluster string) bool {
	if len(rt.mut.respAdd)+len(rt.mut.respRemove) > 0 {
		return true
	}
	wc := rt.weighted(cluster)
	return wc != nil && len(wc.mut.respAdd)+len(wc.mut.respRemove) > 0
}

func (rt *Route) weighted(cluster string) *WeightedCluster {
	for i := range rt.Clusters {
		if rt.Clusters[i].Name == cluster && !rt.Clusters[i].mut.empty() {
			return &rt.Clusters[i]
		}
	}
	return nil
}

// RedirectLocation is the Location of a Redirect route's answer to r.
func (rt *Route) RedirectLocation(r *http.Request) string {
	rd := rt.Redirect
	if rd == nil {
		return ""
	}
	scheme := rd.Scheme
	if scheme == "" {
		scheme = "http"
		if r.TLS != nil {
			scheme = "https"
		}
	}
	host, port := r.Host, ""
	if h, ok := stripPort(host); ok {
		host, port = h, host[len(h)+1:]
	}
	if rd.Host != "" {
		host = rd.Host
		if h, ok := stripPort(host); ok {
			host, port = h, rd.Host[len(h)+1:]
		}
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.Scheme != "" && rd.Host == "":
		port = "" // a scheme change drops the old scheme's port, as Envoy does
	}
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	path := r.URL.EscapedPath()
	switch {
	case rd.Path != "":
		path = rd.Path
	case rd.PrefixRewrite != "":
		path = rt.rewritePrefix(path, rd.PrefixRewrite)
	case rd.RegexRewrite != nil:
		path = rd.RegexRewrite.Apply(path)
	}
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	b.WriteString(path)
	if !rd.StripQuery && r.URL.RawQuery != "" && !strings.Contains(rd.Path, "?") {
		b.WriteByte('?')
		b.WriteString(r.URL.RawQuery)
	}
	return b.String()
}

// mutations are header additions and removals, in the order applied.
type mutations struct {
	reqAdd     []headerValue
	reqRemove  []string
	respAdd    []headerValue
	respRemove []string
}

func (m mutations) empty() bool {
	return len(m.reqAdd)+len(m.reqRemove)+len(m.respAdd)+len(m.respRemove) == 0
}

type appendAction uint8

const (
	appendOrAdd appendAction = iota
	addIfAbsent
	overwriteOrAdd
	overwriteIfExists
)

type headerValue struct {
	key    string // canonical
	value  string
	action appendAction
}

func compileMutations(reqAdd []*corev3.HeaderValueOption, reqRemove []string, respAdd []*corev3.HeaderValueOption, respRemove []string) (mutations, error) {
	var m mutations
	var err error
	if m.reqAdd, err = compileAdds(reqAdd); err != nil {
		return m, fmt.Errorf("request_headers_to_add%w", err)
	}
	if m.respAdd, err = compileAdds(respAdd); err != nil {
		return m, fmt.Errorf("response_headers_to_add%w", err)
	}
	for i, h := range reqRemove {
		if h == "" || strings.HasPrefix(h, ":") || strings.EqualFold(h, "host") {
			return m, fmt.Errorf("request_headers_to_remove[%d]: %q cannot be removed", i, h)
		}
		m.reqRemove = append(m.reqRemove, textproto.CanonicalMIMEHeaderKey(h))
	}
	for i, h := range respRemove {
		if h == "" || strings.HasPrefix(h, ":") {
			return m, fmt.Errorf("response_headers_to_remove[%d]: %q cannot be removed", i, h)
		}
		m.respRemove = append(m.respRemove, textproto.CanonicalMIMEHeaderKey(h))
	}
	return m, nil
}

func compileAdds(hs []*corev3.HeaderValueOption) ([]headerValue, error) {
	var out []headerValue
	for i, h := range hs {
		k := h.GetHeader().GetKey()
		if k == "" || strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
			return nil, fmt.Errorf("[%d]: header key %q cannot be set", i, k)
		}
		v := h.GetHeader().GetValue()
		if len(h.GetHeader().GetRawValue()) > 0 {
			v = string(h.GetHeader().GetRawValue())
		}
		lit, err := literal(v)
		if err != nil {
			return nil, fmt.Errorf("[%d] %q: %w", i, k, err)
		}
		hv := headerValue{key: textproto.CanonicalMIMEHeaderKey(k), value: lit}
		if h.GetAppend() != nil {
			if !h.GetAppend().GetValue() {
				hv.action = overwriteOrAdd
			}
		} else {
			switch h.GetAppendAction() {
			case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
				hv.action = appendOrAdd
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				hv.action = addIfAbsent
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				hv.action = overwriteOrAdd
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				hv.action = overwriteIfExists
			default:
				return nil, fmt.Errorf("[%d] %q: append_action %v is not known", i, k, h.GetAppendAction())
			}
		}
		out = append(out, hv)
	}
	return out, nil
}

// literal decodes an Envoy header value: "%%" is a "%"; any other
// %COMMAND% (request attributes) is not supported.
func literal(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("value %q: %%COMMAND%% substitutions are not supported (write %%%% for a %%)", v)
	}
	return b.String(), nil
}

// nest orders the mutations of an inner level (route) and its enclosing
// level (virtual host, route configuration): Envoy applies the inner
// level first, so the outer one wins a conflict, unless
// most_specific_header_mutations_wins.
func nest(inner, outer mutations, innerWins bool) mutations {
	first, second := inner, outer
	if innerWins {
		first, second = outer, inner
	}
	return mutations{
		reqAdd:     concat(first.reqAdd, second.reqAdd),
		reqRemove:  concat(inner.reqRemove, outer.reqRemove),
		respAdd:    concat(first.respAdd, second.respAdd),
		respRemove: concat(inner.respRemove, outer.respRemove),
	}
}

func concat[T any](a, b []T) []T {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	out := make([]T, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

func (m *mutations) applyRequest(h http.Header) {
	for _, k := range m.reqRemove {
		delete(h, k)
	}
	apply(h, m.reqAdd)
}

func (m *mutations) applyResponse(h http.Header) {
	for _, k := range m.respRemove {
		delete(h, k)
	}
	apply(h, m.respAdd)
}

func apply(h http.Header, adds []headerValue) {
	for _, a := range adds {
		_, exists := h[a.key]
		switch a.action {
		case appendOrAdd:
			h[a.key] = append(h[a.key], a.value)
		case addIfAbsent:
			if !exists {
				h[a.key] = []string{a.value}
			}
		case overwriteOrAdd:
			h[a.key] = []string{a.value}
		case overwriteIfExists:
			if exists {
				h[a.key] = []string{a.value}
			}
		}
	}
}
