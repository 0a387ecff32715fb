package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// framingCases are requests a proxy must refuse: each would let two
// parties read the same bytes as different requests, or is malformed.
// status is what a server answers.
var framingCases = []struct {
	name   string
	req    string
	status int
}{
	{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n0\r\n\r\n", 400},
	{"conflicting CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"conflicting CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 30\r\n\r\nhello", 400},
	{"CL with sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400},
	{"CL not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello", 400},
	{"TE not chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400},
	{"TE chunked then gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400},
	{"TE gzip chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
	{"TE obfuscated", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400},
	{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk size with space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400},
	{"chunk ext bare LF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n", 400},
	{"chunk ext abuse", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("1;"+strings.Repeat("x", 1000)+"\r\na\r\n", 20) + "0\r\n\r\n", 400},
	{"chunk data without CRLF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400},
	{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400},
	{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", 400},
	{"bare LF in field", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400},
	{"bare CR", "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400},
	{"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400},
	{"NUL in target", "GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
	{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
	{"bad version", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400},
	{"HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505},
	{"header too large", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
}

// readAll reads every request from in as a server would, and returns the
// requests' targets and bodies, or the first error.
func readAll(in []byte, maxHead int) (targets []string, bodies []string, err error) {
	r := NewReader(bytes.NewReader(in))
	for {
		head, err := r.ReadHead(maxHead)
		if err != nil {
			if err == io.EOF {
				return targets, bodies, nil
			}
			return targets, bodies, err
		}
		var req Request
		if err := ParseRequest(head, &req); err != nil {
			return targets, bodies, err
		}
		r.Done()
		var b Body
		switch {
		case req.Chunked:
			b.Reset(r, Chunked, -1)
		default:
			b.Reset(r, Length, req.ContentLength)
		}
		body, err := io.ReadAll(&b)
		if err != nil {
			return targets, bodies, err
		}
		targets = append(targets, req.Target)
		bodies = append(bodies, string(body))
		if req.Close {
			return targets, bodies, nil
		}
	}
}

func TestFramingRefused(t *testing.T) {
	for _, c := range framingCases {
		t.Run(c.name, func(t *testing.T) {
			targets, _, err := readAll([]byte(c.req), 64<<10)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got requests %q and error %v, want a framing error", targets, err)
			}
			if e.Status != c.status {
				t.Errorf("status %d (%s), want %d", e.Status, e.Msg, c.status)
			}
			for _, tg := range targets {
				if tg == "/smuggled" {
					t.Errorf("the smuggled request was parsed")
				}
			}
		})
	}
}

func TestWellFramed(t *testing.T) {
	in := "\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello" +
		"POST /b?q=1 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\nTrailer: x-t\r\n\r\n" +
		"5;name=\"v;\\\"x\";n2\r\nhello\r\n6 ; e\r\n world\r\n0\r\nX-T: 1\r\n\r\n" +
		"GET /c HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nConnection: close\r\n\r\n" +
		"GET /never HTTP/1.1\r\nHost: a\r\n\r\n"
	targets, bodies, err := readAll([]byte(in), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/a", "/b?q=1", "/c"}
	if strings.Join(targets, " ") != strings.Join(want, " ") {
		t.Fatalf("targets %q, want %q", targets, want)
	}
	if bodies[0] != "hello" || bodies[1] != "hello world" || bodies[2] != "" {
		t.Fatalf("bodies %q", bodies)
	}
}

func TestChunkedTrailersAndEOFWithLastBytes(t *testing.T) {
	r := NewReader(strings.NewReader("3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\nNEXT"))
	var b Body
	b.Reset(r, Chunked, -1)
	p := make([]byte, 64)
	n, err := b.Read(p)
	if n != 3 || err != io.EOF {
		t.Fatalf("read %d, %v; want 3 bytes with EOF", n, err)
	}
	if b.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("trailer %v", b.Trailer)
	}
	if string(r.Bytes()) != "NEXT" {
		t.Fatalf("left %q", r.Bytes())
	}
}

func TestParseResponse(t *testing.T) {
	cases := []struct {
		head   string
		method string
		ok     bool
		kind   string
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "GET", true, "len"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", true, "chunked"},
		{"HTTP/1.1 200 OK\r\n\r\n", "GET", true, "close"},
		{"HTTP/1.1 204 No Content\r\n\r\n", "GET", true, "none"},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD", true, "none"},
		{"HTTP/1.1 200\r\nContent-Length: 3\r\n\r\n", "GET", true, "len"},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", false, ""},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "GET", false, ""},
		{"HTTP/1.1 2000 OK\r\n\r\n", "GET", false, ""},
		{"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "GET", false, ""},
		{"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", "GET", false, ""},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", false, ""},
	}
	for _, c := range cases {
		var resp Response
		err := ParseResponse([]byte(c.head), c.method, &resp)
		if (err == nil) != c.ok {
			t.Errorf("%q: err %v, want ok=%v", c.head, err, c.ok)
			continue
		}
		if err != nil {
			continue
		}
		kind := "len"
		switch {
		case resp.NoBody:
			kind = "none"
		case resp.Chunked:
			kind = "chunked"
		case resp.ContentLength < 0:
			kind = "close"
		}
		if kind != c.kind {
			t.Errorf("%q: body %s, want %s", c.head, kind, c.kind)
		}
	}
}

func TestScanChunked(t *testing.T) {
	cases := []struct {
		in       string
		complete bool
		bad      bool
	}{
		{"5\r\nhello\r\n0\r\n\r\n", true, false},
		{"5\r\nhel", false, false},
		{"5\r\nhello\r\n0\r\nA: b\r\n\r\n", true, false},
		{"5\r\nhello\r\n0\r\nA: b\r\n", false, false},
		{"zz\r\nhello\r\n", false, true},
		{"5\r\nhelloXX", false, true},
		{"5\nhello", false, true},
		{"5;" + strings.Repeat("a", 5000), false, true},
	}
	for _, c := range cases {
		complete, err := ScanChunked([]byte(c.in))
		if complete != c.complete || (err != nil) != c.bad {
			t.Errorf("%q: complete %v err %v; want %v bad %v", c.in, complete, err, c.complete, c.bad)
		}
	}
}

func TestWriters(t *testing.T) {
	b := AppendStatusLine(nil, 200)
	b = AppendField(b, "X-A", "a\r\nInjected: 1")
	b = AppendField(b, "Bad Key", "x")
	b = append(b, "\r\n"...)
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Injected") != "" || resp.Header.Get("X-A") != "a  Injected: 1" {
		t.Fatalf("header %v", resp.Header)
	}
}
