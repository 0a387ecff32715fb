package h1

import (
	"net/http"
	"strings"
)

// Request is a parsed request head.
type Request struct {
	Method string
	// Target is the request-target as sent (origin-form "/a?b",
	// absolute-form "http://h/a", authority-form, or "*").
	Target     string
	ProtoMinor int // 0 or 1 (HTTP/1.0, HTTP/1.1)
	Header     http.Header
	// Host is the Host header ("" when absent, HTTP/1.0 only).
	Host string
	// Body framing: ContentLength >= 0, or -1 with Chunked.
	ContentLength int64
	Chunked       bool
	// Close: the connection closes after this exchange (Connection:
	// close, or HTTP/1.0 without keep-alive).
	Close bool
	// Expect100: Expect: 100-continue.
	Expect100 bool
}

// Response is a parsed response head.
type Response struct {
	Status     int
	Reason     string
	ProtoMinor int
	Header     http.Header
	// Body framing: NoBody, or ContentLength >= 0, or Chunked, or
	// (ContentLength -1, not Chunked) delimited by the connection's close.
	NoBody        bool
	ContentLength int64
	Chunked       bool
	Close         bool
}

// ParseRequest parses a request head from ReadHead.
func ParseRequest(head []byte, req *Request) error {
	*req = Request{}
	s := string(head) // one allocation: every header value is a substring
	line, rest, _ := strings.Cut(s, "\r\n")
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errf(http.StatusBadRequest, "malformed request line")
	}
	method := line[:sp1]
	if !isToken(method) {
		return errf(http.StatusBadRequest, "malformed method")
	}
	sp2 := strings.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return errf(http.StatusBadRequest, "malformed request line")
	}
	target := line[sp1+1 : sp1+1+sp2]
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f {
			return errf(http.StatusBadRequest, "malformed request target")
		}
	}
	minor, err := parseVersion(line[sp1+2+sp2:])
	if err != nil {
		return err
	}
	req.Method, req.Target, req.ProtoMinor = method, target, minor
	n := countLines(rest)
	req.Header = make(http.Header, n)
	if err := parseFields(rest, req.Header, n, http.StatusBadRequest); err != nil {
		return err
	}
	return requestFraming(req)
}

func parseVersion(v string) (int, error) {
	switch v {
	case "HTTP/1.1":
		return 1, nil
	case "HTTP/1.0":
		return 0, nil
	}
	if len(v) == 8 && strings.HasPrefix(v, "HTTP/") && v[6] == '.' && v[5] >= '0' && v[5] <= '9' && v[7] >= '0' && v[7] <= '9' {
		return 0, errf(http.StatusHTTPVersionNotSupported, "unsupported version "+v)
	}
	return 0, errf(http.StatusBadRequest, "malformed version")
}

// countLines counts the header lines of a head's rest (for sizing maps).
func countLines(s string) int {
	return max(strings.Count(s, "\n")-1, 0)
}

// requestFraming applies RFC 9112 §6 to a request: its body length, and
// whether the connection can carry another request.
func requestFraming(req *Request) error {
	h := req.Header
	hosts := h["Host"]
	switch {
	case len(hosts) > 1:
		return errf(http.StatusBadRequest, "more than one Host")
	case len(hosts) == 1:
		if !validHost(hosts[0]) {
			return errf(http.StatusBadRequest, "malformed Host")
		}
		req.Host = hosts[0]
	case req.ProtoMinor == 1:
		return errf(http.StatusBadRequest, "missing Host")
	}
	conn := h["Connection"]
	if req.ProtoMinor == 0 {
		req.Close = !hasToken(conn, "keep-alive")
	} else {
		req.Close = hasToken(conn, "close")
	}
	if e := h["Expect"]; len(e) > 0 && req.ProtoMinor == 1 {
		req.Expect100 = strings.EqualFold(e[0], "100-continue")
	}
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	if len(te) > 0 {
		if len(cl) > 0 {
			return errf(http.StatusBadRequest, "both Content-Length and Transfer-Encoding")
		}
		if req.ProtoMinor == 0 {
			return errf(http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request")
		}
		if err := chunkedOnly(te); err != nil {
			return err
		}
		req.Chunked, req.ContentLength = true, -1
		return nil
	}
	n, err := contentLength(cl)
	if err != nil {
		return err
	}
	req.ContentLength = n
	return nil
}

// chunkedOnly accepts exactly "chunked" (RFC 9112 §6.3: chunked must be
// the final coding; we carry no other).
func chunkedOnly(te []string) error {
	n := 0
	last := ""
	for _, v := range te {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok = strings.Trim(tok, " \t")
			if tok == "" {
				continue
			}
			n++
			last = tok
		}
	}
	if !strings.EqualFold(last, "chunked") {
		return errf(http.StatusBadRequest, "Transfer-Encoding does not end with chunked")
	}
	if n > 1 {
		return errf(http.StatusNotImplemented, "unsupported transfer coding")
	}
	return nil
}

// contentLength parses the Content-Length values (a list of identical
// values is one value, RFC 9110 §8.6); -1 if there is none... of a
// request: 0 when absent.
func contentLength(cl []string) (int64, error) {
	if len(cl) == 0 {
		return 0, nil
	}
	n := int64(-1)
	for _, v := range cl {
		for {
			tok, more, found := strings.Cut(v, ",")
			tok = strings.Trim(tok, " \t")
			m, ok := parseDecimal(tok)
			if !ok {
				return 0, errf(http.StatusBadRequest, "malformed Content-Length")
			}
			if n >= 0 && m != n {
				return 0, errf(http.StatusBadRequest, "conflicting Content-Length")
			}
			n = m
			if !found {
				break
			}
			v = more
		}
	}
	return n, nil
}

func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// ParseResponse parses a response head from ReadHead, for a request with
// method (a HEAD response has no body).
func ParseResponse(head []byte, method string, resp *Response) error {
	*resp = Response{}
	s := string(head)
	line, rest, _ := strings.Cut(s, "\r\n")
	// HTTP/1.x SP 3DIGIT SP [reason]
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return errf(http.StatusBadGateway, "malformed status line")
	}
	minor, err := parseVersion(line[:8])
	if err != nil {
		return errf(http.StatusBadGateway, "malformed status line version")
	}
	code := 0
	for i := 9; i < 12; i++ {
		c := line[i]
		if c < '0' || c > '9' {
			return errf(http.StatusBadGateway, "malformed status code")
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return errf(http.StatusBadGateway, "malformed status code")
	}
	reason := ""
	if len(line) > 13 {
		reason = line[13:]
		for i := 0; i < len(reason); i++ {
			if c := reason[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return errf(http.StatusBadGateway, "malformed reason phrase")
			}
		}
	}
	resp.Status, resp.Reason, resp.ProtoMinor = code, reason, minor
	n := countLines(rest)
	resp.Header = make(http.Header, n)
	if err := parseFields(rest, resp.Header, n, http.StatusBadGateway); err != nil {
		return err
	}
	h := resp.Header
	conn := h["Connection"]
	if minor == 0 {
		resp.Close = !hasToken(conn, "keep-alive")
	} else {
		resp.Close = hasToken(conn, "close")
	}
	resp.ContentLength = -1
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	if len(te) > 0 && len(cl) > 0 {
		return errf(http.StatusBadGateway, "both Content-Length and Transfer-Encoding")
	}
	if len(cl) > 0 {
		n, err := contentLength(cl)
		if err != nil {
			return errf(http.StatusBadGateway, err.(*Error).Msg)
		}
		resp.ContentLength = n
	}
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified || method == http.MethodHead {
		resp.NoBody = true
		return nil
	}
	if len(te) > 0 {
		if err := chunkedOnly(te); err != nil {
			return errf(http.StatusBadGateway, err.(*Error).Msg)
		}
		resp.Chunked = true
		return nil
	}
	if resp.ContentLength < 0 {
		resp.Close = true // delimited by the close
	}
	return nil
}

// parseFields parses header field lines (each ending in CRLF, then the
// empty line) into h. Values are substrings of s. status is the status of
// the error.
func parseFields(s string, h http.Header, lines, status int) error {
	// One backing array for the common one-value headers.
	vals := make([]string, 0, lines)
	for {
		line, rest, ok := strings.Cut(s, "\r\n")
		if !ok {
			return errf(status, "malformed header section")
		}
		if line == "" {
			return nil
		}
		s = rest
		if line[0] == ' ' || line[0] == '\t' {
			return errf(status, "obsolete line folding")
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return errf(status, "malformed header line")
		}
		name := line[:colon]
		if !isToken(name) {
			return errf(status, "malformed header name")
		}
		v := strings.Trim(line[colon+1:], " \t")
		for i := 0; i < len(v); i++ {
			if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return errf(status, "control character in header value")
			}
		}
		key := canonicalKey(name)
		if old, ok := h[key]; ok {
			h[key] = append(old, v)
			continue
		}
		if len(vals) == cap(vals) {
			vals = make([]string, 0, 8)
		}
		vals = append(vals, v)
		h[key] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
}

// Header field names seen on most messages, so that canonicalizing them
// allocates nothing.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Accept-Ranges", "Authorization",
		"Cache-Control", "Connection", "Content-Encoding", "Content-Length", "Content-Type",
		"Cookie", "Date", "Etag", "Expect", "Host", "If-Modified-Since", "If-None-Match",
		"Keep-Alive", "Last-Modified", "Location", "Origin", "Referer", "Server", "Set-Cookie",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "User-Agent", "Vary",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "Traceparent", "Tracestate",
		"Grpc-Status", "Grpc-Message", "X-Mesh-Reason", "Retry-After", "Sec-Websocket-Key",
		"Sec-Websocket-Version", "Sec-Websocket-Accept", "Sec-Websocket-Protocol",
		"Sec-Websocket-Extensions", "Access-Control-Allow-Origin", "X-Content-Type-Options",
		"Proxy-Connection", "Proxy-Authorization", "Content-Range", "Range", "Expires", "Pragma",
	} {
		m[k] = k
	}
	return m
}()

// canonicalKey is textproto's canonical form of a token name.
func canonicalKey(name string) string {
	var buf [64]byte
	if len(name) > len(buf) {
		return http.CanonicalHeaderKey(name)
	}
	b := buf[:len(name)]
	upper := true
	same := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			same = false
		}
		b[i] = c
		upper = c == '-'
	}
	if k, ok := commonKeys[string(b)]; ok {
		return k
	}
	if same {
		return name
	}
	return string(b)
}

// tokenChars: RFC 9110 tchar.
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// validHost accepts the characters of a uri-host[:port] (RFC 3986).
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if tokenChars[c] {
			continue
		}
		switch c {
		case ':', '[', ']', '(', ')', ',', ';', '=', '@':
			continue
		}
		return false
	}
	return true
}

// hasToken reports whether the comma-separated values vv contain token
// (case-insensitive).
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(tok, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// HasToken reports whether the comma-separated header values vv contain
// token, case-insensitively (Connection: close, Upgrade...).
func HasToken(vv []string, token string) bool { return hasToken(vv, token) }
