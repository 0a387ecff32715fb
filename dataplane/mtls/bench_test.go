package mtls_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/mtls"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/identity/identitytest"
	"github.com/meshvm/mesh/wire"
)

// BenchmarkHop is one agent-to-agent hop (the caller's Forwarder, the
// callee's Server answering 100 bytes) in plain text and over mTLS,
// both ends in this process: cpu-ns/op is the CPU both ends spend per
// request, the figure the ≤15% target is about; connections are pooled,
// so handshakes are out of the steady state.
//
//	go test -run '^$' -bench Hop -benchmem -cpu 1 -count 5 ./dataplane/mtls/
func BenchmarkHop(b *testing.B) {
	ca := identitytest.NewCA(b, "mesh.local")
	server, client := ca.Credentials(b, "orders"), ca.Credentials(b, "web")
	body := make([]byte, 100)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	for _, tc := range []struct {
		name  string
		mtls  bool
		proto endpoint.Protocol
	}{{"plain-http1", false, endpoint.HTTP1}, {"mtls-http1", true, endpoint.HTTP1}, {"plain-h2c", false, endpoint.HTTP2}, {"mtls-h2", true, endpoint.HTTP2}} {
		b.Run(tc.name, func(b *testing.B) {
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ln := raw
			var creds *identity.Credentials
			if tc.mtls {
				in := &mtls.Inbound{Creds: server, Mode: func() string { return wire.MTLSStrict }, Log: zerolog.Nop()}
				ln, creds = in.Listener(raw), client
			}
			srv := proxy.NewServer(h, zerolog.Nop())
			srv.ConnContext = mtls.ConnContext
			go func() { _ = srv.Serve(ln) }()
			defer srv.Close()
			d := &mtls.Dialer{Creds: creds, Protocol: proxy.DialProtocol,
				Peer: func(context.Context, string) (identity.ID, bool) { return ca.ID("orders"), true }}
			fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop(), WrapDial: func(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
				return d.Wrap(dial)
			}})
			defer fwd.CloseIdleConnections()
			addr := raw.Addr().String()
			send := func() error {
				r := httptest.NewRequest(http.MethodGet, "http://orders/get", nil)
				resp, err := fwd.Send(httptest.NewRecorder(), r, addr, &proxy.Attempt{Protocol: tc.proto})
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				return resp.Body.Close()
			}
			// Warm the pool (and its handshakes) up to the concurrency
			// of the measured part.
			var wg sync.WaitGroup
			for i := 0; i < 16*runtime.GOMAXPROCS(0); i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 20; j++ {
						_ = send()
					}
				}()
			}
			wg.Wait()
			b.SetParallelism(16)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := send(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
