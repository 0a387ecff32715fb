package proxy

import (
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// NewServer returns a server for h that speaks HTTP/1.1 and HTTP/2 with
// prior knowledge (h2c) on the same port. It has header and idle timeouts
// but no read or write timeout: gRPC and SSE streams may last for hours.
// It does not listen; the caller calls Serve and Shutdown.
func NewServer(h http.Handler, logger zerolog.Logger) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    256 << 10,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          15 * time.Second,
		},
		ErrorLog: log.New(serverLogWriter{logger.With().Str("component", "http-server").Logger()}, "", 0),
	}
}

// serverLogWriter sends net/http's own complaints (bad clients, aborted
// handshakes) to zerolog at debug level: they are about clients, not us.
// Handler panics are errors.
type serverLogWriter struct{ log zerolog.Logger }

func (w serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "panic") {
		w.log.Error().Msg(msg)
	} else {
		w.log.Debug().Msg(msg)
	}
	return len(p), nil
}
