package chain_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/proxy"
)

// rawBackend is an app that records exactly the bytes that reach it. It
// reads requests as a lenient server would (net/http), so a request
// smuggled past the agents would show up in its record; it answers each
// request by its path: "/bad-*" paths with a broken response, "/drip"
// with 4 bytes over 2 s (recording when each was sent), others "ok".
type rawBackend struct {
	addr string
	mu   sync.Mutex
	got  bytes.Buffer
	reqs []string // request targets read
	sent []time.Time
}

func startRawBackend(t *testing.T, host string) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var connsMu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				b.serve(c)
			}()
		}
	}()
	return b
}

type recorder struct{ b *rawBackend }

func (r recorder) Write(p []byte) (int, error) {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	return r.b.got.Write(p)
}

func (b *rawBackend) serve(c net.Conn) {
	br := bufio.NewReader(io.TeeReader(c, recorder{b}))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		b.mu.Lock()
		b.reqs = append(b.reqs, req.URL.Path)
		b.mu.Unlock()
		resp, ok := badResponses[req.URL.Path]
		switch {
		case ok:
			_, _ = io.WriteString(c, resp)
		case req.URL.Path == "/drip":
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
			for i := range 4 {
				if i > 0 {
					time.Sleep(500 * time.Millisecond)
				}
				b.mu.Lock()
				b.sent = append(b.sent, time.Now())
				b.mu.Unlock()
				if _, err := c.Write([]byte{'a' + byte(i)}); err != nil {
					return
				}
			}
		default:
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	}
}

// take returns and clears what arrived and the requests read.
func (b *rawBackend) take() (string, []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, r := b.got.String(), b.reqs
	b.got.Reset()
	b.reqs = nil
	return s, r
}

// badResponses break HTTP/1.1 framing in the ways a smuggling attack (or
// a broken app) does; after each, "EVIL" bytes follow that a
// desynchronised proxy would take for the next response.
var badResponses = map[string]string{
	"/bad-clte":   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
	"/bad-cl":     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 6\r\n\r\nokEVIL",
	"/bad-lf":     "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	"/bad-fold":   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n c\r\n\r\nok",
	"/bad-colon":  "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nokEVIL",
	"/bad-nul":    "HTTP/1.1 200 OK\r\nX-A: \x00\r\nContent-Length: 2\r\n\r\nok",
	"/bad-status": "HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
	"/bad-chunk":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nEVIL\r\n0\r\n\r\n",
	"/extra":      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
}

// rawPath is a two-hop path to a raw backend: A's outbound (service
// "raw") -> B's inbound -> the backend.
type rawPath struct {
	backend *rawBackend
	inbound string // B's inbound listener
}

func startRawPath(t *testing.T, service string) *rawPath {
	t.Helper()
	b := startRawBackend(t, meshHostB1)
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
	t.Cleanup(fwd.CloseIdleConnections)
	sw, err := meshSwitch(nil, fwd)
	if err != nil {
		t.Fatal(err)
	}
	in := serve(t, meshHostB1, sw.Inbound(b.addr))
	topo.resolver.set(service, in)
	return &rawPath{backend: b, inbound: in}
}

// smuggling are requests no agent may forward, each followed by a
// request that would be smuggled if the framing were read two ways.
var smuggling = []struct {
	name, req string
	status    int
}{
	{"CL and TE", "POST / HTTP/1.1\r\nHost: raw\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 400},
	{"TE and CL, short", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400},
	{"conflicting CL", "POST / HTTP/1.1\r\nHost: raw\r\nContent-Length: 5\r\nContent-Length: 48\r\n\r\nhello", 400},
	{"CL list", "POST / HTTP/1.1\r\nHost: raw\r\nContent-Length: 5, 48\r\n\r\nhello", 400},
	{"bad chunk size", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk size overflow", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk extension abuse", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("1;"+strings.Repeat("e", 1000)+"\r\nx\r\n", 20) + "0\r\n\r\n", 400},
	{"chunk without CRLF", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400},
	{"TE not chunked", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
	{"TE obfuscated", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: raw\r\nX-A: b\r\n c\r\n\r\n", 400},
	{"whitespace before colon", "POST / HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400},
	{"bare LF", "GET / HTTP/1.1\nHost: raw\n\n", 400},
	{"bare CR", "GET / HTTP/1.1\r\nHost: raw\rX-A: b\r\n\r\n", 400},
	{"NUL", "GET / HTTP/1.1\r\nHost: raw\r\nX-A: a\x00b\r\n\r\n", 400},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: raw\r\nHost: other\r\n\r\n", 400},
	{"headers too large", "GET / HTTP/1.1\r\nHost: raw\r\nX-A: " + strings.Repeat("a", 80<<10) + "\r\n\r\n", 431},
}

const smuggled = "GET /smuggled HTTP/1.1\r\nHost: raw\r\n\r\n"

// TestFramingSmugglingRefused sends each malformed request with raw
// sockets to A's outbound (both agents on the path) and to B's inbound:
// the agent answers 400 (431) and closes, the backend receives nothing,
// and the agent still serves afterwards.
func TestFramingSmugglingRefused(t *testing.T) {
	p := startRawPath(t, "raw")
	for _, target := range []struct{ name, addr string }{{"both agents", topo.outbound}, {"inbound", p.inbound}} {
		for _, tc := range smuggling {
			t.Run(target.name+"/"+tc.name, func(t *testing.T) {
				c, err := net.DialTimeout("tcp", target.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(c, tc.req+smuggled); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no response: %v", err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
				}
				if !resp.Close {
					t.Errorf("response does not announce Connection: close")
				}
				if n, err := br.Read(make([]byte, 1)); n > 0 || err == nil {
					t.Errorf("the connection carried more after the refusal (%d bytes, %v)", n, err)
				}
				assertPathServes(t, target.addr, p.backend)
			})
		}
	}
}

// assertPathServes checks that nothing reached the backend before, and
// that a well-framed request through addr now reaches it as exactly one
// request.
func assertPathServes(t *testing.T, addr string, b *rawBackend) {
	t.Helper()
	got, reqs := b.take()
	if got != "" || len(reqs) != 0 {
		t.Errorf("the backend received %q (requests %q), want nothing", got, reqs)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "POST /after HTTP/1.1\r\nHost: raw\r\nContent-Length: 5\r\n\r\nhello")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the agent does not serve after the refusal: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("after the refusal: %d %q", resp.StatusCode, body)
	}
	got, reqs = b.take()
	if len(reqs) != 1 || reqs[0] != "/after" || !strings.HasPrefix(got, "POST /after HTTP/1.1\r\n") || !strings.HasSuffix(got, "\r\n\r\nhello") {
		t.Errorf("the backend received %q (requests %q), want one POST /after", got, reqs)
	}
}

// TestFramingBadResponses: an app's response that breaks HTTP/1.1 framing
// becomes a 502 (or, once the response has started, a closed
// connection), and the client's connection never carries the app's
// leftover bytes as a response.
func TestFramingBadResponses(t *testing.T) {
	p := startRawPath(t, "raw-bad")
	for _, target := range []struct{ name, addr string }{{"both agents", topo.outbound}, {"inbound", p.inbound}} {
		for path := range badResponses {
			t.Run(target.name+path, func(t *testing.T) {
				c, err := net.DialTimeout("tcp", target.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: raw-bad\r\n\r\n", path)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					if path == "/bad-chunk" {
						return // the head went out; the broken body closed the connection
					}
					t.Fatalf("no response: %v", err)
				}
				body, berr := io.ReadAll(resp.Body)
				switch {
				case path == "/extra":
					if resp.StatusCode != 200 || string(body) != "ok" {
						t.Fatalf("%d %q, want 200 ok", resp.StatusCode, body)
					}
				case path == "/bad-chunk":
					if berr == nil && resp.StatusCode != http.StatusBadGateway {
						t.Fatalf("%d %q: a broken body was delivered whole", resp.StatusCode, body)
					}
				default:
					if resp.StatusCode != http.StatusBadGateway {
						t.Fatalf("status %d %q, want 502", resp.StatusCode, body)
					}
				}
				if bytes.Contains(body, []byte("EVIL")) {
					t.Fatalf("the app's extra bytes reached the client: %q", body)
				}
				// The same connection, if still open, answers the next
				// request with its own response.
				if _, err := fmt.Fprintf(c, "GET /good HTTP/1.1\r\nHost: raw-bad\r\n\r\n"); err != nil {
					return
				}
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					return // closed: fine
				}
				body, _ = io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(body) != "ok" {
					t.Fatalf("next response on the connection: %d %q (desynchronised)", resp.StatusCode, body)
				}
			})
		}
	}
	p.backend.take()
}

// TestDripIsForwardedPromptly: a response with a Content-Length whose
// bytes come slowly (4 bytes over 2 s) reaches the client byte by byte,
// each within 100 ms of the app sending it, through both agents.
func TestDripIsForwardedPromptly(t *testing.T) {
	p := startRawPath(t, "raw-drip")
	var worst time.Duration
	for attempt := range 2 { // a loaded machine gets a second chance
		worst = 0
		c, err := net.DialTimeout("tcp", topo.outbound, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /drip HTTP/1.1\r\nHost: raw-drip\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got []time.Time
		var body []byte
		buf := make([]byte, 8)
		for len(body) < 4 {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				now := time.Now()
				for range n {
					got = append(got, now)
				}
				body = append(body, buf[:n]...)
			}
			if err != nil {
				break
			}
		}
		c.Close()
		p.backend.mu.Lock()
		sent := p.backend.sent
		p.backend.sent = nil
		p.backend.mu.Unlock()
		if string(body) != "abcd" || len(sent) != 4 {
			t.Fatalf("body %q, %d bytes sent", body, len(sent))
		}
		for i := range 4 {
			worst = max(worst, got[i].Sub(sent[i]))
		}
		t.Logf("attempt %d: worst delay %v", attempt+1, worst)
		if worst <= 100*time.Millisecond {
			break
		}
	}
	if worst > 100*time.Millisecond {
		t.Errorf("a byte of the drip arrived %v after the app sent it, want <= 100ms", worst)
	}
	p.backend.take()
}
