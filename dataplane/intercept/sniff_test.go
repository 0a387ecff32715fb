package intercept

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Protocol
		more bool
	}{
		{"http1 get", "GET / HTTP/1.1\r\nHost: orders\r\n\r\n", HTTP1, false},
		{"http1 post", "POST /x?y HTTP/1.0\r\n", HTTP1, false},
		{"request line incomplete", "GET /very/long", TCP, true},
		{"method prefix", "PO", TCP, true},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP2, false},
		{"h2 preface prefix", "PRI * HT", TCP, true},
		{"redis", "*1\r\n$4\r\nPING\r\n", TCP, false},
		{"get without version", "GET foo\r\n", TCP, false},
		{"empty", "", TCP, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, more := Detect([]byte(tc.in))
			if p != tc.want || more != tc.more {
				t.Fatalf("Detect(%q) = %v more=%v, want %v more=%v", tc.in, p, more, tc.want, tc.more)
			}
		})
	}
}

// TestDetectClientHello: a real ClientHello from crypto/tls, with its SNI.
func TestDetectClientHello(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: "orders.mesh", InsecureSkipVerify: true})
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_ = c.Handshake()
		a.Close()
	}()
	buf := make([]byte, maxSniff)
	n := 0
	for {
		_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := b.Read(buf[n:])
		n += k
		p, sni, more := Detect(buf[:n])
		if !more {
			if p != TLS || sni != "orders.mesh" {
				t.Fatalf("got %v sni %q", p, sni)
			}
			b.Close()
			return
		}
		if err != nil {
			t.Fatalf("read: %v after %d bytes", err, n)
		}
	}
}

func FuzzDetect(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		Detect(b)
	})
}
