package intercept

import (
	"bytes"
	"encoding/binary"
)

// Protocol is what a connection's first bytes say it speaks.
type Protocol uint8

// Protocols told apart on the first bytes.
const (
	// TCP is anything else (or a client that said nothing in time).
	TCP Protocol = iota
	// HTTP1 opens with an HTTP/1.x request line.
	HTTP1
	// HTTP2 opens with the h2c connection preface.
	HTTP2
	// TLS opens with a TLS handshake record (a ClientHello).
	TLS
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	case TLS:
		return "tls"
	}
	return "tcp"
}

// IsHTTP reports whether the agent's HTTP path can serve it.
func (p Protocol) IsHTTP() bool { return p == HTTP1 || p == HTTP2 }

var (
	h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	methods   = [][]byte{[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("HEAD "), []byte("DELETE "),
		[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE ")}
)

// maxSniff bounds how many bytes detection reads before it decides.
const maxSniff = 4096

// Detect decides the protocol from b, the first bytes a client sent.
// more says b is too short to decide and more bytes may change the
// answer; at a timeout or EOF the caller takes the answer as it is.
// sni is the server name of a TLS ClientHello, when it has one.
func Detect(b []byte) (p Protocol, sni string, more bool) {
	if len(b) == 0 {
		return TCP, "", true
	}
	if n := min(len(b), len(h2Preface)); bytes.Equal(b[:n], h2Preface[:n]) {
		if n == len(h2Preface) {
			return HTTP2, "", false
		}
		return TCP, "", true
	}
	if b[0] == 0x16 { // TLS handshake record
		if len(b) < 6 {
			return TCP, "", true
		}
		if b[1] != 3 || b[5] != 1 { // TLS 1.x record, ClientHello
			return TCP, "", false
		}
		recLen := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+recLen && len(b) < maxSniff {
			return TLS, "", true
		}
		return TLS, serverName(b[5:min(len(b), 5+recLen)]), false
	}
	for _, m := range methods {
		n := min(len(b), len(m))
		if bytes.Equal(b[:n], m[:n]) {
			if n < len(m) {
				return TCP, "", true
			}
			// The request line ends with " HTTP/1.x\r\n".
			if i := bytes.IndexByte(b, '\n'); i >= 0 {
				line := bytes.TrimRight(b[:i], "\r")
				if j := bytes.LastIndexByte(line, ' '); j > 0 && bytes.HasPrefix(line[j+1:], []byte("HTTP/1.")) {
					return HTTP1, "", false
				}
				return TCP, "", false
			}
			return TCP, "", len(b) < maxSniff
		}
	}
	return TCP, "", false
}

// serverName finds the server_name extension of a ClientHello handshake
// message (hs starts at the handshake header), or "".
func serverName(hs []byte) string {
	// type(1) length(3) version(2) random(32)
	if len(hs) < 38 {
		return ""
	}
	p := hs[38:]
	skip := func(lenBytes int) bool {
		if len(p) < lenBytes {
			return false
		}
		n := 0
		for _, c := range p[:lenBytes] {
			n = n<<8 | int(c)
		}
		if len(p) < lenBytes+n {
			return false
		}
		p = p[lenBytes+n:]
		return true
	}
	if !skip(1) || !skip(2) || !skip(1) { // session id, cipher suites, compression
		return ""
	}
	if len(p) < 2 {
		return ""
	}
	ext := p[2:min(len(p), 2+int(binary.BigEndian.Uint16(p)))]
	for len(ext) >= 4 {
		typ, n := binary.BigEndian.Uint16(ext), int(binary.BigEndian.Uint16(ext[2:]))
		if len(ext) < 4+n {
			return ""
		}
		body := ext[4 : 4+n]
		ext = ext[4+n:]
		if typ != 0 { // server_name
			continue
		}
		// list length(2), then entries: type(1) length(2) name
		if len(body) < 5 || body[2] != 0 {
			return ""
		}
		l := int(binary.BigEndian.Uint16(body[3:]))
		if len(body) < 5+l {
			return ""
		}
		return string(body[5 : 5+l])
	}
	return ""
}
