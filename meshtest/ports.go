package meshtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Free ports, for the real parts a test starts on fixed addresses (Consul,
// Jaeger, a mesh process). Three rules keep two parts from being given
// the same port:
//
//   - ports come from outside the kernel's ephemeral range
//     (net.ipv4.ip_local_port_range), so a port handed out is never the
//     one the kernel gives a ":0" listener or an outgoing connection a
//     moment later;
//   - a port is handed out once per machine while the process that took it
//     lives: each one is claimed with an flock on a file in
//     $TMPDIR/meshtest-ports, held until the process exits, so neither two
//     calls in one test binary nor two test binaries running side by side
//     get the same port;
//   - a port is handed out only if TCP and UDP (Consul's DNS and Serf use
//     both) can bind it on the host right now.
//
// A port taken between the check and the part's bind is still possible
// (by a program that does not use meshtest): the Consul and Jaeger helpers
// recognise the clash and start again on new ports.

// FreePort returns a TCP and UDP port free on host, never handed out
// before to this or another running test process. It panics when none
// can be found.
func FreePort(host string) int {
	return FreePorts(host, 1)[0]
}

// FreePorts returns n distinct ports free on host; see FreePort.
func FreePorts(host string, n int) []int {
	ports, err := defaultPicker.pick(host, n)
	if err != nil {
		panic(err)
	}
	return ports
}

var defaultPicker = newPortPicker(filepath.Join(os.TempDir(), "meshtest-ports"))

// portPicker hands out ports; see FreePort. Its claims are held for its
// lifetime (in practice, the process's).
type portPicker struct {
	dir    string
	ranges [][2]int // inclusive
	mu     sync.Mutex
	claims map[int]*os.File // open and flocked
}

func newPortPicker(dir string) *portPicker {
	return &portPicker{dir: dir, ranges: portRanges(ephemeralRange()), claims: map[int]*os.File{}}
}

// ephemeralRange is the kernel's range for ":0" and outgoing connections.
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999 // Linux's default
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	l, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || l > h {
		return lo, hi
	}
	return l, h
}

// portRanges is what is left of 20000-65535 around the ephemeral range.
// Below 20000 are the fixed ports of mesh (15000-15006, 18000, 19000),
// Consul (8300-8600) and Jaeger (4317, 4318, 16686) that a demo or a real
// install may be using.
func portRanges(ephLo, ephHi int) [][2]int {
	const lo, hi = 20000, 65535
	var out [][2]int
	if ephLo > lo {
		out = append(out, [2]int{lo, min(ephLo-1, hi)})
	}
	if ephHi < hi {
		out = append(out, [2]int{max(ephHi+1, lo), hi})
	}
	if len(out) == 0 { // an ephemeral range over everything: share it
		out = append(out, [2]int{lo, hi})
	}
	return out
}

func (p *portPicker) size() int {
	n := 0
	for _, r := range p.ranges {
		n += r[1] - r[0] + 1
	}
	return n
}

func (p *portPicker) random() int {
	i := rand.IntN(p.size())
	for _, r := range p.ranges {
		if w := r[1] - r[0] + 1; i >= w {
			i -= w
			continue
		}
		return r[0] + i
	}
	panic("unreachable")
}

// pick returns n distinct ports free on host and claims them.
func (p *portPicker) pick(host string, n int) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.MkdirAll(p.dir, 0o777); err != nil {
		return nil, fmt.Errorf("pick free ports: %w", err)
	}
	out := make([]int, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000+10*n {
			return nil, fmt.Errorf("pick %d free ports on %s: found only %d in %d tries", n, host, len(out), tries)
		}
		port := p.random()
		if _, taken := p.claims[port]; taken || !bindable(host, port) {
			continue
		}
		f, err := p.claim(port)
		if err != nil {
			return nil, fmt.Errorf("pick free ports: %w", err)
		}
		if f == nil {
			continue // another test process holds it
		}
		p.claims[port] = f
		out = append(out, port)
	}
	return out, nil
}

// claim flocks the port's file; nil when another process holds it.
func (p *portPicker) claim(port int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(p.dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}

// release gives every claimed port back (for tests of the picker).
func (p *portPicker) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for port, f := range p.claims {
		f.Close()
		delete(p.claims, port)
	}
}

// bindable reports whether TCP and UDP can both bind host:port now.
func bindable(host string, port int) bool {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// portClash reports whether a log line says a port was taken or given
// twice, and returns that line.
func portClash(log string) (string, bool) {
	for _, s := range []string{"address already in use", "already configured for"} {
		if l := lastLine(log, s); l != "" {
			return l, true
		}
	}
	return "", false
}

// lastLine returns the last line of log that contains s, "" for none.
func lastLine(log, s string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}
