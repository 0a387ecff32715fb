package h1

import (
	"bytes"
	"io"
	"net/http"
	"strings"
)

// Limits of the chunked framing. A chunk line (size and extensions) is at
// most MaxChunkLine bytes; the extensions of one message at most
// MaxChunkExtensions bytes in total; a trailer section at most
// MaxTrailerBytes.
const (
	MaxChunkLine       = 4096
	MaxChunkExtensions = 16 << 10
	MaxTrailerBytes    = 64 << 10
)

var (
	errChunkSize = errf(http.StatusBadRequest, "malformed chunk size")
	errChunkExt  = errf(http.StatusBadRequest, "malformed chunk extension")
	errChunkExts = errf(http.StatusBadRequest, "chunk extensions too long")
	errChunkEnd  = errf(http.StatusBadRequest, "chunk data not followed by CRLF")
)

// BodyKind is how a message body is delimited.
type BodyKind uint8

const (
	// NoBody: the message has no body.
	NoBody BodyKind = iota
	// Length: Content-Length bytes.
	Length
	// Chunked: the chunked transfer coding.
	Chunked
	// UntilClose: the rest of the connection (a response only).
	UntilClose
)

// Body reads one message body from a Reader, enforcing its framing. After
// io.EOF the Reader is positioned at the next message; after any other
// error the connection cannot be read as messages again (Broken). It is
// not safe for concurrent use.
type Body struct {
	r      *Reader
	kind   BodyKind
	remain int64 // Length: bytes left; Chunked: bytes left of this chunk
	state  uint8
	ext    int // chunk extension bytes so far
	err    error
	// Trailer receives the trailer fields of a chunked body when it ends
	// (nil: create on demand).
	Trailer http.Header
	// BeforeRead, if set, runs once before the first read from the
	// connection (a server sends 100 Continue).
	BeforeRead func()
}

const (
	stSize uint8 = iota // expecting a chunk-size line
	stData              // in chunk data
	stCRLF              // expecting CRLF after chunk data
	stTrailer
	stDone
)

// Reset prepares b to read a body of kind (n bytes for Length) from r.
func (b *Body) Reset(r *Reader, kind BodyKind, n int64) {
	*b = Body{r: r, kind: kind, remain: n}
	if kind == NoBody || (kind == Length && n == 0) {
		b.state = stDone
	}
}

// Kind returns how the body is delimited.
func (b *Body) Kind() BodyKind { return b.kind }

// Done reports whether the body was read to its end.
func (b *Body) Done() bool { return b.state == stDone }

// Broken reports whether reading the body failed: the connection's bytes
// can no longer be read as messages.
func (b *Body) Broken() bool { return b.err != nil && b.err != io.EOF }

// Err returns the error that ended the body, if any.
func (b *Body) Err() error { return b.err }

// Remaining returns the bytes of a Length body still to read.
func (b *Body) Remaining() int64 { return b.remain }

// Read reads body bytes. The last bytes come with io.EOF when the end of
// the framing is already buffered.
func (b *Body) Read(p []byte) (int, error) {
	if b.state == stDone {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if b.BeforeRead != nil && b.r.Buffered() == 0 {
		f := b.BeforeRead
		b.BeforeRead = nil
		f()
	}
	var n int
	var err error
	switch b.kind {
	case Length:
		if int64(len(p)) > b.remain {
			p = p[:b.remain]
		}
		n, err = b.r.read(p)
		b.remain -= int64(n)
		if b.remain == 0 {
			b.state = stDone
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	case UntilClose:
		n, err = b.r.read(p)
		if err == io.EOF {
			b.state = stDone
		}
	case Chunked:
		n, err = b.readChunked(p)
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *Body) readChunked(p []byte) (int, error) {
	for {
		switch b.state {
		case stSize:
			line, err := b.r.readLine(MaxChunkLine)
			if err != nil {
				return 0, err
			}
			if err := b.sizeLine(line); err != nil {
				return 0, err
			}
		case stData:
			if int64(len(p)) > b.remain {
				p = p[:b.remain]
			}
			n, err := b.r.read(p)
			b.remain -= int64(n)
			if err == io.EOF {
				return n, io.ErrUnexpectedEOF
			}
			if err != nil {
				return n, err
			}
			if b.remain == 0 {
				b.state = stCRLF
				if err := b.advance(); err != nil {
					return n, err
				}
				if b.state == stDone {
					return n, io.EOF
				}
			}
			return n, nil
		case stCRLF:
			line, err := b.r.readLine(MaxChunkLine)
			if err != nil {
				return 0, err
			}
			if len(line) != 0 {
				return 0, errChunkEnd
			}
			b.state = stSize
		case stTrailer:
			if err := b.readTrailer(); err != nil {
				return 0, err
			}
		case stDone:
			return 0, io.EOF
		}
	}
}

// advance consumes the framing after a chunk's data as far as it is
// buffered, so that the end of a body is seen with its last bytes.
func (b *Body) advance() error {
	for {
		buf := b.r.Bytes()
		switch b.state {
		case stCRLF:
			if len(buf) < 2 {
				return nil
			}
			if buf[0] != '\r' || buf[1] != '\n' {
				return errChunkEnd
			}
			b.r.Discard(2)
			b.state = stSize
		case stSize:
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				return nil
			}
			line, err := b.r.readLine(MaxChunkLine)
			if err != nil {
				return err
			}
			if err := b.sizeLine(line); err != nil {
				return err
			}
		case stTrailer:
			if !(len(buf) >= 2 && buf[0] == '\r' && buf[1] == '\n') && bytes.Index(buf, crlfcrlf) < 0 {
				return nil
			}
			if err := b.readTrailer(); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

func (b *Body) sizeLine(line []byte) error {
	size, ext, err := parseChunkLine(line)
	if err != nil {
		return err
	}
	b.ext += ext
	if b.ext > MaxChunkExtensions {
		return errChunkExts
	}
	if size == 0 {
		b.state = stTrailer
		return nil
	}
	b.remain = size
	b.state = stData
	return nil
}

func (b *Body) readTrailer() error {
	block, err := b.r.readHead(MaxTrailerBytes, false)
	if err != nil {
		if err == ErrHeaderTooLarge {
			return errf(http.StatusBadRequest, "trailers too large")
		}
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if len(block) > 2 {
		if b.Trailer == nil {
			b.Trailer = make(http.Header)
		}
		n := countLines(string(block)) + 1
		if err := parseFields(string(block), b.Trailer, n, http.StatusBadRequest); err != nil {
			return err
		}
		// Framing and routing fields are not trailers (RFC 9110 §6.5.1).
		for _, k := range [...]string{"Content-Length", "Transfer-Encoding", "Host", "Trailer", "Connection"} {
			delete(b.Trailer, k)
		}
	}
	b.state = stDone
	return nil
}

func unhex(c byte) int64 {
	switch {
	case '0' <= c && c <= '9':
		return int64(c - '0')
	case 'a' <= c && c <= 'f':
		return int64(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int64(c-'A') + 10
	}
	return -1
}

// parseChunkLine parses chunk-size [chunk-ext] (RFC 9112 §7.1) and
// returns the size and the length of the extensions.
func parseChunkLine(line []byte) (size int64, ext int, err error) {
	i := 0
	for ; i < len(line); i++ {
		d := unhex(line[i])
		if d < 0 {
			break
		}
		if i >= 15 {
			return 0, 0, errChunkSize
		}
		size = size<<4 | d
	}
	if i == 0 {
		return 0, 0, errChunkSize
	}
	rest := line[i:]
	if len(rest) == 0 {
		return size, 0, nil
	}
	if !validExtensions(rest) {
		if rest[0] != ';' && rest[0] != ' ' && rest[0] != '\t' {
			return 0, 0, errChunkSize
		}
		return 0, 0, errChunkExt
	}
	return size, len(rest), nil
}

// validExtensions checks *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ).
func validExtensions(s []byte) bool {
	i := 0
	ws := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
	}
	token := func() bool {
		j := i
		for i < len(s) && tokenChars[s[i]] {
			i++
		}
		return i > j
	}
	for {
		if i == len(s) {
			return true
		}
		ws()
		if i == len(s) || s[i] != ';' {
			return false
		}
		i++
		ws()
		if !token() {
			return false
		}
		ws()
		if i < len(s) && s[i] == '=' {
			i++
			ws()
			if i < len(s) && s[i] == '"' {
				i++
				for {
					if i >= len(s) {
						return false
					}
					c := s[i]
					if c == '"' {
						i++
						break
					}
					if c == '\\' {
						i++
						if i >= len(s) {
							return false
						}
					} else if (c < ' ' && c != '\t') || c == 0x7f {
						return false
					}
					i++
				}
			} else if !token() {
				return false
			}
		}
	}
}

// (BWS after a name is only allowed before "=": "5;a " is refused.)

// ScanChunked validates the chunked framing of b, a prefix of a chunked
// body as far as it has arrived, without consuming it. complete says
// whether the body (with its trailers) ends within b. An error is the one
// reading the body would meet.
func ScanChunked(b []byte) (complete bool, err error) {
	ext := 0
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(b) > MaxChunkLine {
				return false, errf(http.StatusBadRequest, "chunk line too long")
			}
			if bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
				return false, errBareCR
			}
			return false, nil
		}
		if i == 0 || b[i-1] != '\r' {
			return false, errBareLF
		}
		size, e, err := parseChunkLine(b[:i-1])
		if err != nil {
			return false, err
		}
		ext += e
		if ext > MaxChunkExtensions {
			return false, errChunkExts
		}
		b = b[i+1:]
		if size == 0 {
			return scanTrailer(b)
		}
		if int64(len(b)) < size+2 {
			if int64(len(b)) > size && b[size] != '\r' {
				return false, errChunkEnd
			}
			return false, nil
		}
		if b[size] != '\r' || b[size+1] != '\n' {
			return false, errChunkEnd
		}
		b = b[size+2:]
	}
}

func scanTrailer(b []byte) (bool, error) {
	if len(b) >= 2 && b[0] == '\r' && b[1] == '\n' {
		return true, nil
	}
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		for i, c := range b {
			if c == 0 || (c == '\n' && (i == 0 || b[i-1] != '\r')) {
				return false, errf(http.StatusBadRequest, "malformed trailer")
			}
		}
		return false, nil
	}
	block := b[:end+4]
	for i, c := range block {
		if c == 0 || (c == '\n' && (i == 0 || block[i-1] != '\r')) || (c == '\r' && block[i+1] != '\n') {
			return false, errf(http.StatusBadRequest, "malformed trailer")
		}
	}
	h := make(http.Header)
	s := string(block)
	if err := parseFields(s, h, strings.Count(s, "\n"), http.StatusBadRequest); err != nil {
		return false, err
	}
	return true, nil
}
