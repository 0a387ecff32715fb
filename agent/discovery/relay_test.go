package discovery

import (
	"io"
	"net"
	"sync"
	"testing"
)

// relay is a TCP relay between a client under test and a real Consul, which
// the test can take down (refusing and cutting every connection) and bring
// back up on the same address: a Consul outage without stopping the shared
// Consul.
type relay struct {
	t      testing.TB
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startRelay(t testing.TB, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay listen: %v", err)
	}
	r := &relay{t: t, addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	r.serve(ln)
	t.Cleanup(r.down)
	return r
}

func (r *relay) serve(ln net.Listener) {
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", r.target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns[c], r.conns[u] = struct{}{}, struct{}{}
			r.mu.Unlock()
			r.wg.Add(2)
			go r.pipe(c, u)
			go r.pipe(u, c)
		}
	}()
}

func (r *relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// down closes the listener and every relayed connection.
func (r *relay) down() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// up listens again on the same address.
func (r *relay) up() {
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatalf("relay listen again on %s: %v", r.addr, err)
	}
	r.serve(ln)
}
