package h1

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// AppendRequestLine appends "METHOD target HTTP/1.1\r\n".
func AppendRequestLine(dst []byte, method, target string) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	return append(dst, " HTTP/1.1\r\n"...)
}

// AppendStatusLine appends "HTTP/1.1 code reason\r\n".
func AppendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	if code >= 100 && code <= 999 {
		dst = append(dst, byte('0'+code/100), byte('0'+code/10%10), byte('0'+code%10))
	} else {
		dst = append(dst, "500"...)
	}
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(code)...)
	return append(dst, "\r\n"...)
}

// AppendField appends "Key: value\r\n". A key that is not a token is
// skipped; CR, LF and NUL in a value become spaces, so that no value can
// end the head or start another field.
func AppendField(dst []byte, key, value string) []byte {
	if !isToken(key) {
		return dst
	}
	dst = append(dst, key...)
	dst = append(dst, ": "...)
	start := len(dst)
	dst = append(dst, value...)
	for i := start; i < len(dst); i++ {
		if c := dst[i]; c == '\r' || c == '\n' || c == 0 {
			dst[i] = ' '
		}
	}
	return append(dst, "\r\n"...)
}

// AppendHeader appends every field of h, skipping those skip names
// (canonical keys); skip may be nil.
func AppendHeader(dst []byte, h http.Header, skip func(string) bool) []byte {
	for k, vv := range h {
		if skip != nil && skip(k) {
			continue
		}
		for _, v := range vv {
			dst = AppendField(dst, k, v)
		}
	}
	return dst
}

// AppendContentLength appends "Content-Length: n\r\n".
func AppendContentLength(dst []byte, n int64) []byte {
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, "\r\n"...)
}

// AppendChunkHeader appends the size line of a chunk of n > 0 bytes.
func AppendChunkHeader(dst []byte, n int) []byte {
	dst = strconv.AppendInt(dst, int64(n), 16)
	return append(dst, "\r\n"...)
}

// AppendLastChunk appends the last chunk, the trailer fields and the empty
// line that end a chunked body.
func AppendLastChunk(dst []byte, trailer http.Header) []byte {
	dst = append(dst, "0\r\n"...)
	for k, vv := range trailer {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Host", "Trailer", "Connection":
			continue
		}
		for _, v := range vv {
			dst = AppendField(dst, k, v)
		}
	}
	return append(dst, "\r\n"...)
}

// date caches the Date header value of the current second.
type dateCache struct {
	sec int64
	val string
}

var date atomic.Pointer[dateCache]

// Date returns the current time in the HTTP date format, computed at most
// once a second.
func Date() string {
	now := time.Now()
	sec := now.Unix()
	if d := date.Load(); d != nil && d.sec == sec {
		return d.val
	}
	d := &dateCache{sec: sec, val: now.UTC().Format(http.TimeFormat)}
	date.Store(d)
	return d.val
}
