package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
)

// appServer serves h on hostUpstream speaking only the given protocols,
// as an HTTP/1.1-only app (PHP, Python) or an h2c-only one would.
func appServer(t *testing.T, h1, h2c bool, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(hostUpstream, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(h1)
	p.SetUnencryptedHTTP2(h2c)
	srv := &http.Server{Handler: h, Protocols: &p}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func protoEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Proto+" "+string(b))
	})
}

func h2cOnly() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func h1Only() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
}

// Whatever the caller speaks, the request reaches the app in what the app
// speaks: h2c to an HTTP/1.1 app (curl --http2-prior-knowledge to a PHP
// app) and HTTP/1.1 to an h2c-only app, bodies included.
func TestForwardConvertsToTheAppProtocol(t *testing.T) {
	h1app := appServer(t, true, false, protoEcho())
	h2app := appServer(t, false, true, protoEcho())
	for _, tc := range []struct {
		name   string
		client *http.Client
		app    string
		proto  endpoint.Protocol
		want   string
	}{
		{"h2c to HTTP/1.1 app", h2cOnly(), h1app, endpoint.HTTP1, "HTTP/1.1 ping"},
		{"HTTP/1.1 to h2c app", h1Only(), h2app, endpoint.HTTP2, "HTTP/2.0 ping"},
		{"h2c to h2c app", h2cOnly(), h2app, endpoint.HTTP2, "HTTP/2.0 ping"},
		{"HTTP/1.1 to HTTP/1.1 app", h1Only(), h1app, endpoint.HTTP1, "HTTP/1.1 ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
			defer fwd.CloseIdleConnections()
			fwd.SetAppProtocol(tc.app, tc.proto)
			addr, _ := proxyTo(t, fwd, tc.app)
			resp, err := tc.client.Post("http://"+addr+"/", "text/plain", strings.NewReader("ping"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != tc.want {
				t.Errorf("status %d body %q reason %q, want 200 %q", resp.StatusCode, b, resp.Header.Get("X-Mesh-Reason"), tc.want)
			}
		})
	}
}

// A gRPC call to an app that speaks only HTTP/1.1 gets a gRPC status
// (UNAVAILABLE) saying why, not a reset; an HTTP request to a TCP service
// is refused with protocol-mismatch.
func TestForwardRefusesWhatTheAppCannotCarry(t *testing.T) {
	h1app := appServer(t, true, false, protoEcho())
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
	defer fwd.CloseIdleConnections()
	fwd.SetAppProtocol(h1app, endpoint.HTTP1)
	addr, _ := proxyTo(t, fwd, h1app)

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/grpc.testing.TestService/EmptyCall", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2cOnly().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := resp.Header.Get("Grpc-Status"); got != "14" {
		t.Errorf("grpc-status %q, want 14 (UNAVAILABLE)", got)
	}
	if msg := resp.Header.Get("Grpc-Message"); !strings.Contains(msg, "HTTP/1.1 only") {
		t.Errorf("grpc-message %q does not say the app speaks HTTP/1.1 only", msg)
	}

	// Through Send with the endpoint's protocol, as the outbound side does.
	tcp := serve(t, hostProxy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := fwd.Send(w, r, h1app, &proxy.Attempt{Protocol: endpoint.TCP})
		proxy.WriteError(w, r, err)
	}))
	resp, err = http.Get("http://" + tcp + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Mesh-Reason") != proxy.ReasonProtocolMismatch ||
		!strings.Contains(string(b), "raw TCP") {
		t.Errorf("HTTP to a TCP service: %d %q %q", resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), b)
	}
}

// The auto probe tells an h2c app (and a gRPC server) from an HTTP/1.1
// one, and says nothing about an app that is not there.
func TestProbeProtocol(t *testing.T) {
	gl, err := net.Listen("tcp", net.JoinHostPort(hostUpstream, "0"))
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	defer gs.Stop()
	for _, tc := range []struct {
		name string
		addr string
		want endpoint.Protocol
	}{
		{"HTTP/1.1 app", appServer(t, true, false, protoEcho()), endpoint.HTTP1},
		{"h2c-only app", appServer(t, false, true, protoEcho()), endpoint.HTTP2},
		{"HTTP/1.1 and h2c app", appServer(t, true, true, protoEcho()), endpoint.HTTP2},
		{"gRPC server", gl.Addr().String(), endpoint.HTTP2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proxy.ProbeProtocol(context.Background(), tc.addr)
			if err != nil || got != tc.want {
				t.Errorf("probe = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := proxy.ProbeProtocol(context.Background(), net.JoinHostPort(hostUpstream, "1")); err == nil {
		t.Error("probe of a closed port: no error")
	}
}
