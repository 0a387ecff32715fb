package chain_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// httpbinEcho is what httpbin's /anything, /headers and /post answer.
type httpbinEcho struct {
	Method  string              `json:"method"`
	Headers map[string][]string `json:"headers"`
	Data    string              `json:"data"`
	URL     string              `json:"url"`
}

func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s %s: %v", req.Method, req.URL, err)
	}
	return resp, body
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestMethodsPassThrough(t *testing.T) {
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name, method, body string
	}{
		{name: "get", method: http.MethodGet},
		{name: "post", method: http.MethodPost, body: `{"a":1}`},
		{name: "put", method: http.MethodPut, body: "put body"},
		{name: "patch", method: http.MethodPatch, body: "patch body"},
		{name: "delete", method: http.MethodDelete},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req := newRequest(t, tc.method, "http://orders/anything/x?q=1", body)
			req.Header.Set("Content-Type", "text/plain")
			resp, raw := do(t, c, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, body %s", resp.StatusCode, raw)
			}
			var got httpbinEcho
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			if got.Method != tc.method || got.Data != tc.body {
				t.Errorf("app saw %s %q, want %s %q", got.Method, got.Data, tc.method, tc.body)
			}
			if !strings.HasSuffix(got.URL, "/anything/x?q=1") {
				t.Errorf("app saw URL %s", got.URL)
			}
		})
	}
}

func TestStatusCodesPassThrough(t *testing.T) {
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name string
		code int
	}{
		{name: "no content", code: 204},
		{name: "not modified", code: 304},
		{name: "teapot", code: 418},
		{name: "internal error", code: 500},
		{name: "unavailable from app", code: 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := do(t, c, newRequest(t, http.MethodGet, fmt.Sprintf("http://orders/status/%d", tc.code), nil))
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.code)
			}
			if r := resp.Header.Get("X-Mesh-Reason"); r != "" {
				t.Errorf("app's own %d carries x-mesh-reason %q", tc.code, r)
			}
		})
	}
}

func TestHeaders(t *testing.T) {
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name      string
		send      map[string]string
		absent    []string // must not reach the app
		present   map[string]string
		requestID string // "" means: generated
	}{
		{
			name: "hop-by-hop stripped",
			send: map[string]string{
				"Connection":          "keep-alive, X-Hop",
				"X-Hop":               "secret",
				"Keep-Alive":          "timeout=5",
				"Proxy-Authorization": "Basic Zm9vOmJhcg==",
				"Proxy-Connection":    "keep-alive",
				"Te":                  "deflate",
				"X-End-To-End":        "kept",
			},
			absent:  []string{"X-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te"},
			present: map[string]string{"X-End-To-End": "kept"},
		},
		{
			name:      "request id kept",
			send:      map[string]string{"X-Request-Id": "req-123"},
			requestID: "req-123",
		},
		{
			name:    "forwarded-for appended",
			send:    map[string]string{"X-Forwarded-For": "10.1.2.3"},
			present: map[string]string{"X-Forwarded-For": "10.1.2.3, 127.0.0.1, 127.0.0.1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, http.MethodGet, "http://orders/headers", nil)
			for k, v := range tc.send {
				req.Header.Set(k, v)
			}
			resp, raw := do(t, c, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, raw)
			}
			var got httpbinEcho
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			h := http.Header(got.Headers)
			for _, k := range tc.absent {
				if v, ok := h[k]; ok {
					t.Errorf("hop-by-hop %s reached the app: %q", k, v)
				}
			}
			for k, want := range tc.present {
				if v := h.Get(k); v != want {
					t.Errorf("app got %s %q, want %q", k, v, want)
				}
			}
			if xff := strings.Split(h.Get("X-Forwarded-For"), ","); len(xff) < 2 {
				t.Errorf("X-Forwarded-For %q has no entry per hop", h.Get("X-Forwarded-For"))
			}
			if h.Get("X-Forwarded-Proto") != "http" {
				t.Errorf("X-Forwarded-Proto %q", h.Get("X-Forwarded-Proto"))
			}
			id := h.Get("X-Request-Id")
			switch {
			case tc.requestID != "" && id != tc.requestID:
				t.Errorf("X-Request-Id %q, want %q", id, tc.requestID)
			case tc.requestID == "" && len(id) != 36:
				t.Errorf("generated X-Request-Id %q is not a UUID", id)
			}
		})
	}
}

func TestResponseHopByHopStripped(t *testing.T) {
	c := agentClient(topo.outbound)
	resp, _ := do(t, c, newRequest(t, http.MethodGet,
		"http://orders/response-headers?X-App=1&Keep-Alive=timeout%3D9&Proxy-Authenticate=Basic", nil))
	if resp.Header.Get("X-App") != "1" {
		t.Errorf("end-to-end response header lost: %v", resp.Header)
	}
	for _, k := range []string{"Keep-Alive", "Proxy-Authenticate"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("hop-by-hop response header %s reached the client: %q", k, v)
		}
	}
}

func TestHosts(t *testing.T) {
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name, host string
		status     int
		reason     string
	}{
		{name: "bare", host: "orders", status: 200},
		{name: "mesh domain", host: "orders.mesh", status: 200},
		{name: "consul with port", host: "orders.service.consul:80", status: 200},
		{name: "consul dc upper case", host: "ORDERS.Service.DC1.Consul", status: 200},
		{name: "port on bare name", host: "orders:8080", status: 200},
		{name: "unknown service", host: "billing", status: 503, reason: "no-route"},
		{name: "unknown consul name", host: "billing.service.consul", status: 503, reason: "no-route"},
		{name: "no healthy endpoint", host: "empty.mesh", status: 503, reason: "no-healthy-endpoint"},
		{name: "app down behind its agent", host: "appdown", status: 503, reason: "upstream-connect-failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, http.MethodGet, "http://orders/proto", nil)
			req.Host = tc.host
			resp, body := do(t, c, req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get("X-Mesh-Reason"); got != tc.reason {
				t.Errorf("x-mesh-reason %q, want %q", got, tc.reason)
			}
			if tc.status == 200 && !strings.HasPrefix(string(body), "HTTP/1.1 ") {
				t.Errorf("app saw %q, want HTTP/1.1", body)
			}
		})
	}
}

func TestHTTPProxyAbsoluteForm(t *testing.T) {
	proxyURL, _ := url.Parse("http://" + topo.outbound)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 30 * time.Second}
	for _, tc := range []struct {
		name, url string
		status    int
		err       string // the client's error, for a refused CONNECT
	}{
		{name: "bare name", url: "http://orders/get?x=1", status: 200},
		{name: "consul name", url: "http://orders.service.consul/get", status: 200},
		{name: "unknown", url: "http://billing/get", status: 503},
		{name: "https tunnel refused", url: "https://orders/get", err: "Method Not Allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err != "" {
				_, err := c.Get(tc.url)
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			resp, body := do(t, c, newRequest(t, http.MethodGet, tc.url, nil))
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
		})
	}
}

func TestRoundRobinAndConnectRetry(t *testing.T) {
	dead := meshDeadAddr
	pair := topo.resolver
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name  string
		addrs []string
		want  map[string]int // hostname -> requests out of 6
	}{
		{name: "alternates", want: map[string]int{"b1": 3, "b2": 3}},
		{name: "skips refused endpoint", addrs: []string{dead}, want: map[string]int{"b1": 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			service := "pair"
			if tc.addrs != nil {
				service = "flaky"
				eps, _ := pair.Resolve(context.Background(), "orders")
				pair.set(service, append(tc.addrs, eps[0].Addr)...)
			}
			got := map[string]int{}
			for range 6 {
				req := newRequest(t, http.MethodGet, "http://x/hostname", nil)
				req.Host = service
				resp, body := do(t, c, req)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				var h struct{ Hostname string }
				if err := json.Unmarshal(body, &h); err != nil {
					t.Fatal(err)
				}
				got[h.Hostname]++
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("requests per instance %v, want %v", got, tc.want)
			}
		})
	}
}

func TestChunkedBothWays(t *testing.T) {
	c := agentClient(topo.outbound)
	// A body of unknown length goes out chunked.
	pr, pw := io.Pipe()
	go func() {
		for i := range 5 {
			fmt.Fprintf(pw, "part%d;", i)
		}
		pw.Close()
	}()
	req := newRequest(t, http.MethodPost, "http://orders/post", pr)
	req.Header.Set("Content-Type", "text/plain")
	resp, raw := do(t, c, req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, raw)
	}
	var got httpbinEcho
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Data != "part0;part1;part2;part3;part4;" {
		t.Errorf("app got %q", got.Data)
	}

	// A streamed response comes back chunked, line by line.
	resp, raw = do(t, c, newRequest(t, http.MethodGet, "http://orders/stream/4", nil))
	if resp.StatusCode != 200 || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("status %d, transfer-encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	if n := bytes.Count(raw, []byte("\n")); n != 4 {
		t.Errorf("got %d lines, want 4", n)
	}
}

func TestTrailers(t *testing.T) {
	c := agentClient(topo.outbound)
	resp, err := c.Do(newRequest(t, http.MethodGet, "http://orders/trailers?X-Checksum=abc", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	if got := resp.Trailer.Get("X-Checksum"); got != "abc" {
		t.Errorf("trailer X-Checksum %q, want abc (trailers %v)", got, resp.Trailer)
	}
}

func TestStreamingIsNotBuffered(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		firstLine  string
	}{
		{name: "server-sent events", path: "/sse?count=3&duration=1500ms", firstLine: "event: ping"},
		{name: "full-duplex echo", path: "/echo-stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := agentClient(topo.outbound)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var req *http.Request
			var pw *io.PipeWriter
			if tc.path == "/echo-stream" {
				var pr *io.PipeReader
				pr, pw = io.Pipe()
				req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://orders"+tc.path, pr)
				go func() { _, _ = io.WriteString(pw, "ping\n") }() // more follows only after the echo
			} else {
				req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://orders"+tc.path, nil)
			}
			start := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("first line: %v", err)
			}
			first := time.Since(start)
			if tc.firstLine != "" && !strings.HasPrefix(line, tc.firstLine) {
				t.Errorf("first line %q", line)
			}
			if pw != nil {
				// The echo of the first line arrived while the request body
				// was still open: the stream is full duplex end to end.
				if line != "ping\n" {
					t.Errorf("echo %q", line)
				}
				_, _ = io.WriteString(pw, "pong\n")
				if line, _ = br.ReadString('\n'); line != "pong\n" {
					t.Errorf("second echo %q", line)
				}
				pw.Close()
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatal(err)
			}
			total := time.Since(start)
			if pw == nil && total-first < 500*time.Millisecond {
				t.Errorf("first event after %v, stream ended after %v: the stream was buffered", first, total)
			}
		})
	}
}

func TestLargeBodiesStreamWithBoundedMemory(t *testing.T) {
	const size = 100 << 20
	const budget = 8 << 20 // allocations allowed for 100 MB through two hops
	c := agentClient(topo.outbound)
	for _, tc := range []struct {
		name string
		req  func() *http.Request
		// check reads the response and returns an error if it is wrong.
		check func(resp *http.Response) error
	}{
		{
			name: "upload",
			req: func() *http.Request {
				r := newRequest(t, http.MethodPost, "http://orders/upload", io.LimitReader(zeroReader{}, size))
				return r // no length: streamed chunked
			},
			check: func(resp *http.Response) error {
				var got struct {
					BytesReceived int64 `json:"bytes_received"`
				}
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
					return err
				}
				if got.BytesReceived != size {
					return fmt.Errorf("app received %d bytes, want %d", got.BytesReceived, size)
				}
				return nil
			},
		},
		{
			name: "download",
			req: func() *http.Request {
				return newRequest(t, http.MethodGet, fmt.Sprintf("http://orders/big/%d", size), nil)
			},
			check: func(resp *http.Response) error {
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil {
					return err
				}
				if n != size {
					return fmt.Errorf("downloaded %d bytes, want %d", n, size)
				}
				return nil
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, err := c.Do(tc.req())
			if err != nil {
				t.Fatal(err)
			}
			err = tc.check(resp)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d MB %s through two hops allocated %.1f MB in total", size>>20, tc.name, float64(alloc)/(1<<20))
			if alloc > budget {
				t.Errorf("allocated %d MB for a %d MB body: bodies are buffered", alloc>>20, size>>20)
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestWebSocketEcho(t *testing.T) {
	for _, tc := range []struct{ name, host string }{
		{name: "host header", host: "orders"},
		{name: "mesh name", host: "orders.mesh:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", topo.outbound, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			cfg, err := websocket.NewConfig("ws://"+tc.host+"/websocket/echo", "http://"+tc.host+"/")
			if err != nil {
				t.Fatal(err)
			}
			ws, err := websocket.NewClient(cfg, conn)
			if err != nil {
				t.Fatalf("websocket handshake through the mesh: %v", err)
			}
			defer ws.Close()
			for _, msg := range []string{"hello", strings.Repeat("x", 100<<10), "bye"} {
				if err := websocket.Message.Send(ws, msg); err != nil {
					t.Fatalf("send: %v", err)
				}
				var got string
				if err := websocket.Message.Receive(ws, &got); err != nil {
					t.Fatalf("receive: %v", err)
				}
				if got != msg {
					t.Fatalf("echo of %d bytes came back as %d bytes", len(msg), len(got))
				}
			}
		})
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	c := h2cClient(topo.outbound)
	for _, tc := range []struct {
		name, url string
		status    int
		want      string
	}{
		{name: "authority orders", url: "http://orders/proto", status: 200, want: "HTTP/2.0 orders"},
		{name: "authority consul", url: "http://orders.service.consul/proto", status: 200, want: "HTTP/2.0 orders.service.consul"},
		{name: "unknown", url: "http://billing/proto", status: 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, c, newRequest(t, http.MethodGet, tc.url, nil))
			if resp.ProtoMajor != 2 {
				t.Fatalf("client spoke %s", resp.Proto)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.want != "" && string(body) != tc.want {
				t.Errorf("app saw %q, want %q", body, tc.want)
			}
		})
	}
}

func TestClientCancelReachesApp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{name: "http/1.1", client: agentClient(topo.outbound)},
		{name: "h2c", client: h2cClient(topo.outbound)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			id := tc.name
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://orders/hold?id="+id, nil)
			errc := make(chan error, 1)
			go func() {
				resp, err := tc.client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			select {
			case got := <-appHeld:
				if got != id {
					t.Fatalf("app held %q, want %q", got, id)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("request never reached the app")
			}
			cancel()
			select {
			case got := <-appCancelled:
				if got != id {
					t.Fatalf("app saw cancel of %q, want %q", got, id)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the client's cancel never reached the app")
			}
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Errorf("client error %v, want canceled", err)
			}
		})
	}
}
