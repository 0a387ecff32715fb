package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzRequestFraming reads arbitrary bytes as a server reads a
// connection. It checks that reading never panics, that a chunked body
// ScanChunked refuses is refused when read too, and that whenever both
// this codec and net/http accept the first request they agree on its
// body: no input is one request to us and another to a server behind us.
func FuzzRequestFraming(f *testing.F) {
	for _, c := range framingCases {
		if len(c.req) < 4096 {
			f.Add([]byte(c.req))
		}
	}
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		head, err := r.ReadHead(8 << 10)
		if err != nil {
			return
		}
		var req Request
		if err := ParseRequest(head, &req); err != nil {
			return
		}
		r.Done()
		rest := append([]byte(nil), r.Bytes()...)
		var b Body
		if req.Chunked {
			b.Reset(r, Chunked, -1)
		} else {
			b.Reset(r, Length, req.ContentLength)
		}
		body, berr := io.ReadAll(&b)
		if req.Chunked {
			complete, serr := ScanChunked(rest)
			if serr != nil && berr == nil {
				t.Fatalf("ScanChunked refused %q (%v), the body reader accepted it", rest, serr)
			}
			if berr == nil && !complete && serr == nil {
				t.Fatalf("body read whole from %q but ScanChunked says incomplete", rest)
			}
		}
		if berr != nil {
			return
		}
		std, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		stdBody, err := io.ReadAll(std.Body)
		if err != nil {
			return
		}
		if !bytes.Equal(stdBody, body) {
			t.Fatalf("body %q, net/http reads %q", body, stdBody)
		}
	})
}
