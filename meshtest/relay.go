package meshtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Relay is a TCP relay from a loopback address to a target (a shared
// Consul, say) that a test can take down, refusing new connections and
// cutting open ones, and bring back up on the same address: an outage of
// the target without stopping it. It also counts the connections open
// through it.
type Relay struct {
	addr, target string

	mu         sync.Mutex
	ln         net.Listener // nil while down
	conns      map[net.Conn]struct{}
	open, peak int // relayed connections open now, and at most
	wg         sync.WaitGroup
}

// StartRelay starts a relay to target on a free 127.0.0.1 port. It is
// taken down when t ends.
func StartRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay to %s: listen: %v", target, err)
	}
	r := &Relay{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	r.serve(ln)
	t.Cleanup(r.Down)
	return r
}

// Addr is the relay's address, host:port.
func (r *Relay) Addr() string { return r.addr }

// Up listens again on the relay's address after Down.
func (r *Relay) Up(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Fatalf("relay to %s: listen again on %s: %v", r.target, r.addr, err)
	}
	r.serve(ln)
}

// Down closes the listener and every relayed connection, and waits for
// the relay's goroutines to end. It does nothing when the relay is down.
func (r *Relay) Down() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// PeakConns is the most connections that were open through the relay at
// once.
func (r *Relay) PeakConns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak
}

func (r *Relay) serve(ln net.Listener) {
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
			if r.ln != ln { // taken down meanwhile
				r.mu.Unlock()
				c.Close()
				u.Close()
				return
			}
			r.conns[c], r.conns[u] = struct{}{}, struct{}{}
			r.open++
			r.peak = max(r.peak, r.open)
			r.wg.Add(1)
			r.mu.Unlock()
			go r.relay(c, u)
		}
	}()
}

// relay copies both ways until either side ends, then closes both.
func (r *Relay) relay(c, u net.Conn) {
	defer r.wg.Done()
	var pair sync.WaitGroup
	pair.Add(2)
	pipe := func(dst, src net.Conn) {
		defer pair.Done()
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	go pipe(u, c)
	go pipe(c, u)
	pair.Wait()
	r.mu.Lock()
	r.open--
	delete(r.conns, c)
	delete(r.conns, u)
	r.mu.Unlock()
}
