package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/proxy"
)

const (
	hostProxy    = "127.0.0.31"
	hostUpstream = "127.0.0.32"
)

// serve starts h on host:0 with the agent's server settings and returns
// its address.
func serve(t testing.TB, host string, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.NewServer(h, zerolog.Nop())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return l.Addr().String()
}

// proxyTo serves a handler that forwards everything to upstream, and
// records the error Forward returned (rendered with WriteError).
func proxyTo(t testing.TB, fwd *proxy.Forwarder, upstream string) (addr string, errs chan error) {
	errs = make(chan error, 16)
	addr = serve(t, hostProxy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := fwd.Forward(w, r, upstream)
		if err != nil {
			proxy.WriteError(w, r, err)
		}
		select {
		case errs <- err:
		default:
		}
	}))
	return addr, errs
}

func httpClient(h2c bool) *http.Client {
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func newForwarder() *proxy.Forwarder {
	return proxy.NewForwarder(proxy.Options{Log: zerolog.Nop(), ConnectTimeout: 500 * time.Millisecond})
}

func TestForwardFailuresBeforeResponse(t *testing.T) {
	// An upstream that accepts and closes without answering.
	l, err := net.Listen("tcp", net.JoinHostPort(hostUpstream, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			c.Close()
		}
	}()
	slow := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))

	for _, tc := range []struct {
		name      string
		upstream  string
		h2c       bool
		timeout   time.Duration
		status    int
		reason    string
		retryable bool
	}{
		{name: "refused h1", upstream: "127.0.0.33:1", status: 503, reason: proxy.ReasonConnectFailure, retryable: true},
		{name: "refused h2c", upstream: "127.0.0.33:1", h2c: true, status: 503, reason: proxy.ReasonConnectFailure, retryable: true},
		{name: "reset h1", upstream: l.Addr().String(), status: 502, reason: proxy.ReasonReset},
		{name: "reset h2c", upstream: l.Addr().String(), h2c: true, status: 502, reason: proxy.ReasonReset},
		{name: "deadline h1", upstream: slow, timeout: 200 * time.Millisecond, status: 504, reason: proxy.ReasonTimeout},
		{name: "deadline h2c", upstream: slow, h2c: true, timeout: 200 * time.Millisecond, status: 504, reason: proxy.ReasonTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fwd := newForwarder()
			defer fwd.CloseIdleConnections()
			var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				err := fwd.Forward(w, r, tc.upstream)
				var pe *proxy.Error
				if !errors.As(err, &pe) {
					t.Errorf("Forward returned %v, want *proxy.Error", err)
					proxy.WriteError(w, r, err)
					return
				}
				if proxy.Retryable(err) != tc.retryable {
					t.Errorf("Retryable(%v) = %v", err, !tc.retryable)
				}
				proxy.WriteError(w, r, err)
			})
			if tc.timeout > 0 {
				inner := h
				h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ctx, cancel := context.WithTimeout(r.Context(), tc.timeout)
					defer cancel()
					inner.ServeHTTP(w, r.WithContext(ctx))
				})
			}
			addr := serve(t, hostProxy, h)
			resp, err := httpClient(tc.h2c).Post("http://"+addr+"/x", "text/plain", strings.NewReader("body"))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("X-Mesh-Reason") != tc.reason {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), tc.status, tc.reason)
			}
			if want := "mesh: " + tc.reason + "\n"; string(body) != want {
				t.Errorf("body %q, want %q", body, want)
			}
		})
	}
}

func TestUpstreamResetMidStreamIsNotHidden(t *testing.T) {
	// The upstream promises 1000 bytes, sends 10, and drops the connection:
	// the client must see an error, not a short but clean body.
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		_, _ = w.Write([]byte("0123456789"))
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	for _, tc := range []struct {
		name string
		h2c  bool
	}{{name: "http/1.1"}, {name: "h2c", h2c: true}} {
		t.Run(tc.name, func(t *testing.T) {
			fwd := newForwarder()
			defer fwd.CloseIdleConnections()
			addr, _ := proxyTo(t, fwd, up)
			resp, err := httpClient(tc.h2c).Get("http://" + addr + "/")
			if err != nil {
				return // aborted before the headers reached the client: fine
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("status %d, read %d bytes and a clean end; want an error", resp.StatusCode, len(b))
			}
		})
	}
}

func TestResponseHeadersAndTrailers(t *testing.T) {
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Private")
		h.Set("X-Private", "hop")
		h.Set("X-Public", "e2e")
		h.Set("Trailer", "X-Sum")
		h["Content-Type"] = nil // the app sends none
		w.WriteHeader(201)
		_, _ = io.WriteString(w, "body")
		h.Set("X-Sum", "42")
	}))
	for _, tc := range []struct {
		name string
		h2c  bool
	}{{name: "http/1.1"}, {name: "h2c", h2c: true}} {
		t.Run(tc.name, func(t *testing.T) {
			fwd := newForwarder()
			defer fwd.CloseIdleConnections()
			addr, _ := proxyTo(t, fwd, up)
			resp, err := httpClient(tc.h2c).Get("http://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 201 || string(body) != "body" {
				t.Errorf("got %d %q", resp.StatusCode, body)
			}
			// (HTTP/2 has no Connection header: only HTTP/1.1 can list X-Private.)
			if resp.Header.Get("X-Public") != "e2e" || (!tc.h2c && resp.Header.Get("X-Private") != "") {
				t.Errorf("headers %v: want X-Public kept, X-Private (listed in Connection) dropped", resp.Header)
			}
			if _, ok := resp.Header["Content-Type"]; ok {
				t.Errorf("the proxy sniffed a Content-Type the app did not send: %q", resp.Header.Get("Content-Type"))
			}
			if resp.Trailer.Get("X-Sum") != "42" {
				t.Errorf("trailers %v, want X-Sum: 42", resp.Trailer)
			}
		})
	}
}

func TestUpstreamTransportIgnoresProxyEnv(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://127.0.0.34:1")
	t.Setenv("http_proxy", "http://127.0.0.34:1")
	t.Setenv("NO_PROXY", "")
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "direct")
	}))
	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	addr, _ := proxyTo(t, fwd, up)
	resp, err := httpClient(false).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "direct" {
		t.Fatalf("got %d %q: the upstream was not reached directly", resp.StatusCode, body)
	}
}

func TestUpgradeRelaysBothWays(t *testing.T) {
	// A minimal upgrade-speaking upstream: switches to "echo" and echoes lines.
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Up: 1\r\n\r\n")
		_ = brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString("echo " + line)
			_ = brw.Flush()
		}
	}))
	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	addr, _ := proxyTo(t, fwd, up)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nfirst\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" || resp.Header.Get("X-Up") != "1" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	for _, want := range []string{"echo first\n", "echo second\n"} {
		if want == "echo second\n" {
			_, _ = io.WriteString(c, "second\n")
		}
		got, err := br.ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}
}

func TestWriteError(t *testing.T) {
	for _, tc := range []struct {
		name        string
		contentType string
		err         error
		status      int
		grpcStatus  string
		retryAfter  string
	}{
		{name: "no route", err: &proxy.Error{Status: 503, Reason: proxy.ReasonNoRoute}, status: 503},
		{name: "rate limited", err: &proxy.Error{Status: 429, Reason: "rate-limited", RetryAfter: 1500 * time.Millisecond}, status: 429, retryAfter: "2"},
		{name: "plain error", err: errors.New("boom"), status: 502},
		{name: "grpc unavailable", contentType: "application/grpc", err: &proxy.Error{Status: 503, Reason: proxy.ReasonNoHealthyEndpoint}, status: 200, grpcStatus: "14"},
		{name: "grpc timeout", contentType: "application/grpc+proto", err: &proxy.Error{Status: 504, Reason: proxy.ReasonTimeout}, status: 200, grpcStatus: "4"},
		{name: "grpc rate limited", contentType: "application/grpc", err: &proxy.Error{Status: 429, Reason: "rate-limited"}, status: 200, grpcStatus: "8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, hostProxy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				proxy.WriteError(w, r, tc.err)
			}))
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(""))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			resp, err := httpClient(true).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if resp.Header.Get("X-Mesh-Reason") == "" {
				t.Error("no x-mesh-reason")
			}
			if got := resp.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			if tc.grpcStatus != "" {
				if got := resp.Header.Get("Grpc-Status"); got != tc.grpcStatus {
					t.Errorf("grpc-status %q, want %q", got, tc.grpcStatus)
				}
				if len(body) != 0 {
					t.Errorf("gRPC error has a body: %q", body)
				}
			} else if !strings.HasPrefix(string(body), "mesh: ") {
				t.Errorf("body %q", body)
			}
		})
	}
}

func TestH2CUpgradeRequestGoesOnAsHTTP1(t *testing.T) {
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto+" upgrade="+r.Header.Get("Upgrade"))
	}))
	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	addr, _ := proxyTo(t, fwd, up)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Connection", "Upgrade, HTTP2-Settings")
	req.Header.Set("Upgrade", "h2c")
	req.Header.Set("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")
	resp, err := httpClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "HTTP/1.1 upgrade=" {
		t.Fatalf("got %d %q, want 200 \"HTTP/1.1 upgrade=\"", resp.StatusCode, body)
	}
}

func TestExpectContinue(t *testing.T) {
	up := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	}))
	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	addr, _ := proxyTo(t, fwd, up)
	c := httpClient(false)
	c.Transport.(*http.Transport).ExpectContinueTimeout = 5 * time.Second
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/", strings.NewReader(strings.Repeat("x", 1<<20)))
	req.Header.Set("Expect", "100-continue")
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "1048576" {
		t.Fatalf("upstream received %q bytes", body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v: the client waited for a 100 Continue that never came", d)
	}
}

// A retrying caller looks at the response before the client sees it: a
// discarded 503 never reaches the client, and the replayed body of the
// second try reaches the second upstream whole.
func TestSendDiscardRelay(t *testing.T) {
	failing := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-From", "failing")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	good := serve(t, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-From", "good")
		w.Header().Set("Trailer", "X-Sum")
		_, _ = w.Write(b)
		w.Header().Set("X-Sum", strconv.Itoa(len(b)))
	}))
	for _, tc := range []struct {
		name string
		h2c  bool
	}{{name: "http1"}, {name: "h2c", h2c: true}} {
		t.Run(tc.name, func(t *testing.T) {
			fwd := newForwarder()
			defer fwd.CloseIdleConnections()
			trailers := make(chan string, 1)
			addr := serve(t, hostProxy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body) // as a replaying caller would have kept it
				resp, err := fwd.Send(w, r, failing, &proxy.Attempt{Body: strings.NewReader(string(body))})
				if err != nil {
					proxy.WriteError(w, r, err)
					return
				}
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("first try: status %d", resp.StatusCode)
				}
				proxy.Discard(resp)
				resp, err = fwd.Send(w, r, good, &proxy.Attempt{Ctx: r.Context(), Body: strings.NewReader(string(body))})
				if err != nil {
					proxy.WriteError(w, r, err)
					return
				}
				if err := fwd.Relay(w, r, resp); err != nil {
					t.Errorf("relay: %v", err)
				}
				trailers <- resp.Trailer.Get("X-Sum")
			}))
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("hello"))
			resp, err := httpClient(tc.h2c).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello" || resp.Header.Get("X-From") != "good" {
				t.Fatalf("got %d %q from %q, want 200 \"hello\" from good", resp.StatusCode, body, resp.Header.Get("X-From"))
			}
			if got := resp.Trailer.Get("X-Sum"); got != "5" {
				t.Errorf("client trailer X-Sum %q, want 5", got)
			}
			if got := <-trailers; got != "5" {
				t.Errorf("resp.Trailer after Relay: X-Sum %q, want 5", got)
			}
		})
	}
}
