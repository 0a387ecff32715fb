package routematch

import (
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
	pathSeparatedPrefix
)

// pathMatch is a route's path condition (Envoy's path_specifier).
type pathMatch struct {
	kind     pathKind
	value    string
	re       *regexp.Regexp
	caseFold bool
}

func (p *pathMatch) matches(path string) bool {
	switch p.kind {
	case pathPrefix:
		return hasPrefix(path, p.value, p.caseFold)
	case pathExact:
		if p.caseFold {
			return strings.EqualFold(path, p.value)
		}
		return path == p.value
	case pathSeparatedPrefix:
		if !hasPrefix(path, p.value, p.caseFold) {
			return false
		}
		return len(path) == len(p.value) || path[len(p.value)] == '/'
	default:
		return p.re.MatchString(path)
	}
}

func hasPrefix(s, prefix string, fold bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if fold {
		return strings.EqualFold(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

// stringMatch is Envoy's StringMatcher.
type stringMatch struct {
	kind     uint8 // smExact...
	value    string
	re       *regexp.Regexp
	caseFold bool
}

const (
	smExact uint8 = iota
	smPrefix
	smSuffix
	smContains
	smRegex
)

func (m *stringMatch) matches(v string) bool {
	switch m.kind {
	case smExact:
		if m.caseFold {
			return strings.EqualFold(v, m.value)
		}
		return v == m.value
	case smPrefix:
		return hasPrefix(v, m.value, m.caseFold)
	case smSuffix:
		if len(v) < len(m.value) {
			return false
		}
		if m.caseFold {
			return strings.EqualFold(v[len(v)-len(m.value):], m.value)
		}
		return strings.HasSuffix(v, m.value)
	case smContains:
		if m.caseFold {
			return strings.Contains(strings.ToLower(v), m.value)
		}
		return strings.Contains(v, m.value)
	default:
		return m.re.MatchString(v)
	}
}

func compileRegex(rm *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if rm == nil {
		return nil, fmt.Errorf("missing regex")
	}
	re, err := regexp.Compile(`^(?:` + rm.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("bad regex %q: %w", rm.GetRegex(), err)
	}
	return re, nil
}

func compileStringMatch(sm *matcherv3.StringMatcher) (stringMatch, error) {
	m := stringMatch{caseFold: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.kind, m.value = smExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		m.kind, m.value = smPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		m.kind, m.value = smSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		m.kind, m.value = smContains, p.Contains
		if m.caseFold {
			m.value = strings.ToLower(m.value)
		}
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return m, fmt.Errorf("safe_regex: %w", err)
		}
		if m.caseFold {
			return m, fmt.Errorf("safe_regex: ignore_case is not allowed with a regex (Envoy refuses it)")
		}
		m.kind, m.re = smRegex, re
	default:
		return m, fmt.Errorf("unsupported string matcher %T", p)
	}
	return m, nil
}

// Request pseudo-headers a header matcher may name.
const (
	pseudoNone uint8 = iota
	pseudoMethod
	pseudoAuthority
	pseudoPath
	pseudoScheme
)

// headerMatch is Envoy's HeaderMatcher.
type headerMatch struct {
	name         string // canonical key, for r.Header
	pseudo       uint8
	present      bool // presence only: matches when presence == presentWant
	presentWant  bool
	str          stringMatch
	invert       bool
	missingEmpty bool
}

func compileHeader(h *routev3.HeaderMatcher) (headerMatch, error) {
	name := strings.ToLower(h.GetName())
	if name == "" {
		return headerMatch{}, fmt.Errorf("name: empty")
	}
	m := headerMatch{invert: h.GetInvertMatch(), missingEmpty: h.GetTreatMissingHeaderAsEmpty()}
	switch name {
	case ":method":
		m.pseudo = pseudoMethod
	case ":authority", "host":
		m.pseudo = pseudoAuthority
	case ":path":
		m.pseudo = pseudoPath
	case ":scheme":
		m.pseudo = pseudoScheme
	default:
		if strings.HasPrefix(name, ":") {
			return m, fmt.Errorf("name: pseudo-header %q is not supported", name)
		}
		m.name = textproto.CanonicalMIMEHeaderKey(name)
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		m.present, m.presentWant = true, true
	case *routev3.HeaderMatcher_PresentMatch:
		m.present, m.presentWant = true, s.PresentMatch
	case *routev3.HeaderMatcher_ExactMatch:
		m.str = stringMatch{kind: smExact, value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		m.str = stringMatch{kind: smPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		m.str = stringMatch{kind: smSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		m.str = stringMatch{kind: smContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := compileRegex(s.SafeRegexMatch)
		if err != nil {
			return m, fmt.Errorf("safe_regex_match: %w", err)
		}
		m.str = stringMatch{kind: smRegex, re: re}
	case *routev3.HeaderMatcher_StringMatch:
		if m.str, err = compileStringMatch(s.StringMatch); err != nil {
			return m, fmt.Errorf("string_match: %w", err)
		}
	default:
		return m, fmt.Errorf("unsupported header matcher %T", s)
	}
	return m, nil
}

// value returns the header's value as Envoy sees it (several values
// joined by ","), and whether it is present.
func (m *headerMatch) value(r *http.Request) (string, bool) {
	switch m.pseudo {
	case pseudoMethod:
		return r.Method, true
	case pseudoAuthority:
		return r.Host, true
	case pseudoPath:
		if r.RequestURI != "" {
			return r.RequestURI, true
		}
		return r.URL.RequestURI(), true
	case pseudoScheme:
		if r.URL.Scheme != "" {
			return r.URL.Scheme, true
		}
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	vs := r.Header[m.name]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	default:
		return strings.Join(vs, ","), true
	}
}

func (m *headerMatch) matches(r *http.Request) bool {
	v, ok := m.value(r)
	if m.present {
		return (ok == m.presentWant) != m.invert
	}
	if !ok {
		if !m.missingEmpty {
			return false // a missing header matches no value, inverted or not
		}
		v = ""
	}
	return m.str.matches(v) != m.invert
}

// queryMatch is Envoy's QueryParameterMatcher.
type queryMatch struct {
	name    string
	present bool
	str     stringMatch
}

func compileQuery(q *routev3.QueryParameterMatcher) (queryMatch, error) {
	m := queryMatch{name: q.GetName()}
	if m.name == "" {
		return m, fmt.Errorf("name: empty")
	}
	switch s := q.GetQueryParameterMatchSpecifier().(type) {
	case nil:
		m.present = true
	case *routev3.QueryParameterMatcher_PresentMatch:
		if !s.PresentMatch {
			return m, fmt.Errorf("present_match: false is not meaningful (Envoy requires true)")
		}
		m.present = true
	case *routev3.QueryParameterMatcher_StringMatch:
		var err error
		if m.str, err = compileStringMatch(s.StringMatch); err != nil {
			return m, fmt.Errorf("string_match: %w", err)
		}
	default:
		return m, fmt.Errorf("unsupported query parameter matcher %T", s)
	}
	return m, nil
}

func (m *queryMatch) matches(raw string) bool {
	v, ok := queryValue(raw, m.name)
	if !ok {
		return false
	}
	return m.present || m.str.matches(v)
}

// queryValue finds the first value of a query parameter without parsing
// the whole query; it allocates only when the value is escaped.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != name {
			if strings.ContainsAny(k, "%+") {
				if uk, err := url.QueryUnescape(k); err != nil || uk != name {
					continue
				}
			} else {
				continue
			}
		}
		if strings.ContainsAny(v, "%+") {
			if uv, err := url.QueryUnescape(v); err == nil {
				return uv, true
			}
		}
		return v, true
	}
	return "", false
}
