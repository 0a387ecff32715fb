// Package h1 is an HTTP/1.1 wire codec (RFC 9112): a buffered reader over
// a connection, strict request and response head parsing, message framing
// (Content-Length, chunked, close-delimited) with body readers, and the
// writers of heads and chunks. It has one job — bytes to messages and back
// — and knows nothing of proxies, routing or policies.
//
// The parser is strict where leniency lets two parties read one byte
// stream two ways (request smuggling): both Content-Length and
// Transfer-Encoding, conflicting Content-Length values, bad chunk sizes,
// oversized chunk extensions, obs-fold, whitespace before a colon, bare LF
// or CR and NUL are errors (*Error, with the status a server answers with).
// After such an error the connection must be closed: nothing after the bad
// framing is a message.
//
// Buffers come from a pool and go back to it when a Reader is released,
// so an idle connection can hold none.
package h1

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
)

// Error is a message the codec refuses: the status a server answers a bad
// request with (400, 431, 501, 505), and why.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return "http/1.1: " + e.Msg }

func errf(status int, msg string) *Error { return &Error{Status: status, Msg: msg} }

// Errors a caller may test for.
var (
	// ErrHeaderTooLarge: the head does not fit in the limit (431).
	ErrHeaderTooLarge = errf(http.StatusRequestHeaderFieldsTooLarge, "header too large")
	errBareLF         = errf(http.StatusBadRequest, "bare LF")
	errBareCR         = errf(http.StatusBadRequest, "bare CR")
	errNUL            = errf(http.StatusBadRequest, "NUL in message head")
)

// IsFraming reports whether err is a framing error of the codec (the
// connection can no longer be read as messages).
func IsFraming(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// BufferSize is the size of a pooled read buffer: one keep-alive request
// or response head and a small body fit in it.
const BufferSize = 4 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// GetBuffer returns a pooled buffer of BufferSize bytes.
func GetBuffer() *[]byte { return bufPool.Get().(*[]byte) }

// PutBuffer returns a buffer from GetBuffer to the pool.
func PutBuffer(b *[]byte) {
	if cap(*b) == BufferSize {
		*b = (*b)[:BufferSize]
		bufPool.Put(b)
	}
}

// Reader is a buffered reader over a connection. Its buffer comes from the
// pool on first use and goes back with Release when nothing is buffered,
// so an idle connection holds no buffer. It is not safe for concurrent use.
type Reader struct {
	src  io.Reader
	bp   *[]byte // pooled buffer, or nil
	buf  []byte  // the buffer in use (pooled or grown for a large head)
	r, w int     // unread bytes are buf[r:w]
	err  error   // sticky read error of src

	rawRead func(fd uintptr) bool // FillRaw's read, made once
	rawN    int
	rawErr  error
}

// NewReader returns a Reader over src; it allocates no buffer yet.
func NewReader(src io.Reader) *Reader { return &Reader{src: src} }

// Reset makes r read from src, dropping what was buffered.
func (r *Reader) Reset(src io.Reader) {
	r.src, r.r, r.w, r.err = src, 0, 0, nil
}

// Buffered returns the number of bytes that can be read without reading
// from the connection.
func (r *Reader) Buffered() int { return r.w - r.r }

// Bytes returns the buffered bytes without consuming them; valid until the
// next call on r.
func (r *Reader) Bytes() []byte { return r.buf[r.r:r.w] }

// Discard consumes n buffered bytes (n <= Buffered()).
func (r *Reader) Discard(n int) { r.r += n }

// Release gives the buffer back to the pool when nothing is buffered;
// the next read takes one again.
func (r *Reader) Release() {
	if r.r != r.w || r.buf == nil {
		return
	}
	if r.bp != nil {
		PutBuffer(r.bp)
	}
	r.bp, r.buf, r.r, r.w = nil, nil, 0, 0
}

func (r *Reader) ensure() {
	if r.buf == nil {
		r.bp = GetBuffer()
		r.buf = *r.bp
	}
}

// Err returns the sticky error of the underlying reader, if any.
func (r *Reader) Err() error { return r.err }

// fill reads once more from src into the free end of the buffer, moving
// unread bytes to the front first. It returns the error of src.
func (r *Reader) fill() error {
	if r.err != nil {
		return r.err
	}
	r.ensure()
	if r.r > 0 {
		n := copy(r.buf, r.buf[r.r:r.w])
		r.r, r.w = 0, n
	}
	if r.w == len(r.buf) {
		return nil
	}
	n, err := r.src.Read(r.buf[r.w:])
	r.w += n
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			r.err = err // a timeout is not the end of the connection
		}
		if n > 0 {
			return nil
		}
		return err
	}
	return nil
}

// Fill reads from the connection once if nothing is buffered. It is how a
// server waits for the next request.
func (r *Reader) Fill() error {
	if r.w > r.r {
		return nil
	}
	r.r, r.w = 0, 0
	return r.fill()
}

// Full reports whether the last read filled the buffer: more may be
// waiting on the connection.
func (r *Reader) Full() bool { return r.buf != nil && r.w == len(r.buf) }

// FillGrow reads more, growing the buffer up to max bytes first when it
// is full.
func (r *Reader) FillGrow(max int) error {
	if r.w == len(r.buf) {
		if r.r > 0 {
			n := copy(r.buf, r.buf[r.r:r.w])
			r.r, r.w = 0, n
		} else {
			r.grow(max)
		}
	}
	return r.fill()
}

// FillMore reads from the connection once more, keeping what is
// buffered.
func (r *Reader) FillMore() error { return r.fill() }

// Preload puts b in front of what the connection delivers (a byte read
// while the connection was idle).
func (r *Reader) Preload(b []byte) {
	r.ensure()
	if r.r > 0 {
		n := copy(r.buf, r.buf[r.r:r.w])
		r.r, r.w = 0, n
	}
	copy(r.buf[len(b):], r.buf[:r.w])
	copy(r.buf, b)
	r.w += len(b)
}

// grow makes the buffer able to hold max bytes from r.r.
func (r *Reader) grow(max int) {
	if len(r.buf) >= max {
		return
	}
	size := 2 * len(r.buf)
	if size > max {
		size = max
	}
	nb := make([]byte, size)
	n := copy(nb, r.buf[r.r:r.w])
	if r.bp != nil {
		PutBuffer(r.bp)
		r.bp = nil
	}
	r.buf, r.r, r.w = nb, 0, n
}

// shrink goes back to a pooled buffer after a large head, when what is
// left fits in one.
func (r *Reader) shrink() {
	if r.bp != nil || r.buf == nil || r.w-r.r > BufferSize {
		return
	}
	bp := GetBuffer()
	n := copy(*bp, r.buf[r.r:r.w])
	r.bp, r.buf, r.r, r.w = bp, *bp, 0, n
}

// ReadHead reads up to and including the empty line that ends a message
// head, and returns it (valid until the next call on r). At most max bytes
// are read (ErrHeaderTooLarge). Empty lines before the head are skipped
// (RFC 9112 §2.2). Bare LF, bare CR and NUL are refused as soon as they
// arrive. The caller parses the head, then calls Done.
func (r *Reader) ReadHead(max int) ([]byte, error) { return r.readHead(max, true) }

// readHead reads a head (leading: skip empty lines first) or a trailer
// section (which may be just the empty line).
func (r *Reader) readHead(max int, leading bool) ([]byte, error) {
	r.ensure()
	scanned := 0 // bytes of buf[r.r:] checked
	for {
		// Skip leading CRLFs (a client's extra line after a POST body).
		for leading && scanned == 0 && r.w-r.r >= 2 && r.buf[r.r] == '\r' && r.buf[r.r+1] == '\n' {
			r.r += 2
		}
		b := r.buf[r.r:r.w]
		if !leading && len(b) >= 2 && b[0] == '\r' && b[1] == '\n' {
			r.r += 2
			return b[:2], nil
		}
		for i := scanned; i < len(b); i++ {
			switch b[i] {
			case '\n':
				if i == 0 || b[i-1] != '\r' {
					return nil, errBareLF
				}
				if i >= 3 && b[i-2] == '\n' && b[i-3] == '\r' {
					end := i + 1
					if end > max {
						return nil, ErrHeaderTooLarge
					}
					r.r += end
					return b[:end], nil
				}
			case '\r':
				if i+1 == len(b) {
					goto more // decide when the next byte is here
				}
				if b[i+1] != '\n' {
					return nil, errBareCR
				}
			case 0:
				return nil, errNUL
			}
			scanned = i + 1
		}
	more:
		if len(b) >= max {
			return nil, ErrHeaderTooLarge
		}
		if r.w == len(r.buf) {
			if r.r > 0 {
				n := copy(r.buf, r.buf[r.r:r.w])
				r.r, r.w = 0, n
			} else {
				r.grow(max)
			}
		}
		if err := r.fill(); err != nil {
			if r.w > r.r && err == io.EOF {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// Done ends the reading of a head: a buffer grown for a large head is
// replaced by a pooled one.
func (r *Reader) Done() { r.shrink() }

var crlfcrlf = []byte("\r\n\r\n")

// readLine returns the next line without its CRLF (bare LF is an error),
// reading more as needed, at most max bytes.
func (r *Reader) readLine(max int) ([]byte, error) {
	r.ensure()
	scanned := 0
	for {
		b := r.buf[r.r:r.w]
		if i := bytes.IndexByte(b[scanned:], '\n'); i >= 0 {
			i += scanned
			if i == 0 || b[i-1] != '\r' {
				return nil, errBareLF
			}
			if i+1 > max {
				return nil, errf(http.StatusBadRequest, "chunk line too long")
			}
			r.r += i + 1
			return b[:i-1], nil
		}
		scanned = len(b)
		if len(b) >= max {
			return nil, errf(http.StatusBadRequest, "chunk line too long")
		}
		if r.w == len(r.buf) && r.r > 0 {
			n := copy(r.buf, r.buf[r.r:r.w])
			r.r, r.w = 0, n
		}
		if err := r.fill(); err != nil {
			if err == io.EOF {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// read reads into p: buffered bytes first; with nothing buffered, a large
// p is read straight from the connection.
func (r *Reader) read(p []byte) (int, error) {
	if r.w > r.r {
		n := copy(p, r.buf[r.r:r.w])
		r.r += n
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	if len(p) >= BufferSize {
		n, err := r.src.Read(p)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			r.err = err
		}
		return n, err
	}
	r.r, r.w = 0, 0
	if err := r.fill(); err != nil {
		return 0, err
	}
	n := copy(p, r.buf[r.r:r.w])
	r.r += n
	return n, nil
}

// Read reads raw bytes (after an upgrade: whatever the peer sent after
// the head).
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return r.read(p)
}
