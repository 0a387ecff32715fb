package intercept

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestConnReplaysFirstBytes: what detection read comes first, by Read and
// by WriteTo (the relays' io.Copy), then the rest of the stream.
func TestConnReplaysFirstBytes(t *testing.T) {
	for _, viaWriteTo := range []bool{false, true} {
		client, server := tcpPair(t)
		c := &Conn{TCPConn: server, pre: []byte("GET / HT"), Dst: netip.MustParseAddrPort("10.0.0.2:8080")}
		if _, err := c.SyscallConn(); err == nil {
			t.Fatal("the descriptor is exposed while replayed bytes are pending")
		}
		if _, err := client.Write([]byte("TP/1.1\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		client.CloseWrite()
		var got bytes.Buffer
		var err error
		if viaWriteTo {
			_, err = c.WriteTo(&got)
		} else {
			_, err = io.Copy(&got, struct{ io.Reader }{c})
		}
		if err != nil || got.String() != "GET / HTTP/1.1\r\n\r\n" {
			t.Fatalf("WriteTo=%v: %q %v", viaWriteTo, got.String(), err)
		}
		if _, err := c.SyscallConn(); err != nil {
			t.Fatalf("descriptor hidden after the replay: %v", err)
		}
		if c.LocalAddr().String() != "10.0.0.2:8080" {
			t.Fatalf("LocalAddr %s, want the original destination", c.LocalAddr())
		}
	}
}

// TestNotRedirectedIsClosed: a connection made straight to the intercept
// port (no NAT entry) is closed, never passed on to itself.
func TestNotRedirectedIsClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Name: "test", Log: zerolog.Nop(),
		Route: func(netip.AddrPort, string) Route {
			t.Error("routed a connection that was not redirected")
			return Route{}
		}})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("read %d bytes, %v: want the connection closed", n, err)
	}
	c.Close()
	s.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
