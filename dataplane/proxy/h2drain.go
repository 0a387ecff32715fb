package proxy

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// h2Drain reads what is left of a small HTTP/2 request body the handler
// did not read (a refused request) before the response goes out, so that
// a body that breaks its declared Content-Length is answered with the
// stream error RFC 9113 §8.1.1 requires (PROTOCOL_ERROR) rather than with
// the response, whichever of the two would otherwise arrive first.
type h2Drain struct{ h http.Handler }

// Bounds of the drain: only bodies declared small, and not for long.
const (
	h2DrainMax  = 64 << 10
	h2DrainWait = time.Second
)

func (d h2Drain) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength <= 0 || r.ContentLength > h2DrainMax || r.Header.Get("Expect") != "" {
		d.h.ServeHTTP(w, r)
		return
	}
	body := &untouchedBody{ReadCloser: r.Body}
	r.Body = body
	d.h.ServeHTTP(w, r)
	if !body.takeOver() {
		return // the handler read it (or handed it on)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(h2DrainWait))
	_, _ = io.CopyN(io.Discard, body.ReadCloser, h2DrainMax+1)
}

// untouchedBody knows whether anyone read it; once the drain took it
// over, reads by others fail.
type untouchedBody struct {
	io.ReadCloser
	mu      sync.Mutex
	touched bool
	drained bool
}

func (b *untouchedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.drained {
		b.mu.Unlock()
		return 0, errBodyAfterHandler
	}
	b.touched = true
	b.mu.Unlock()
	return b.ReadCloser.Read(p)
}

// takeOver reports whether the body was never read, and if so keeps
// others from reading it from now on.
func (b *untouchedBody) takeOver() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.touched {
		return false
	}
	b.drained = true
	return true
}
