package meshtest

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// The issue this replaces: ports found by opening and closing ":0"
// listeners, 18 of 5,000 sets of 7 held a duplicate. Sets are distinct
// within themselves and from every port handed out before.
func TestFreePortsAreDistinct(t *testing.T) {
	p := newPortPicker(t.TempDir())
	defer p.release()
	lo, hi := ephemeralRange()
	for batch := 0; batch < 5; batch++ {
		seen := map[int]bool{}
		for set := 0; set < 200; set++ {
			ports, err := p.pick("127.0.0.1", 7)
			if err != nil {
				t.Fatal(err)
			}
			inSet := map[int]bool{}
			for _, port := range ports {
				if inSet[port] {
					t.Fatalf("set %v holds %d twice", ports, port)
				}
				if seen[port] {
					t.Fatalf("port %d handed out twice", port)
				}
				if port >= lo && port <= hi {
					t.Fatalf("port %d is in the ephemeral range %d-%d", port, lo, hi)
				}
				inSet[port], seen[port] = true, true
			}
		}
		p.release() // 5 × 1,400 ports held at once could crowd the range
	}
}

// A port claimed by one picker (another test process, in practice: the
// claim is an flock) is not handed out by another while it is held, and
// is after the claim is gone.
func TestClaimedPortIsNotHandedOutTwice(t *testing.T) {
	dir := t.TempDir()
	a, b := newPortPicker(dir), newPortPicker(dir)
	ports, err := a.pick("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	port := ports[0]
	b.ranges = [][2]int{{port, port}}
	if got, err := b.pick("127.0.0.1", 1); err == nil {
		t.Fatalf("a second picker got %v, claimed by the first", got)
	}
	a.ranges = b.ranges
	if got, err := a.pick("127.0.0.1", 1); err == nil {
		t.Fatalf("the same picker handed %v out again", got)
	}
	a.release()
	if got, err := b.pick("127.0.0.1", 1); err != nil || got[0] != port {
		t.Fatalf("after release: %v, %v; want %d", got, err, port)
	}
	b.release()
}

// A port some other program listens on, over TCP or only over UDP, is
// never handed out.
func TestTakenPortIsSkipped(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, port := range []int{tcp.Addr().(*net.TCPAddr).Port, udp.LocalAddr().(*net.UDPAddr).Port} {
		p := newPortPicker(t.TempDir())
		p.ranges = [][2]int{{port, port}}
		got, err := p.pick("127.0.0.1", 1)
		if err == nil {
			t.Fatalf("port %d in use, handed out as %v", port, got)
		}
		if !strings.Contains(err.Error(), "found only 0") {
			t.Errorf("error %q does not say how many were found", err)
		}
	}
}

func TestPortRangesAvoidTheEphemeralRange(t *testing.T) {
	for _, tc := range []struct {
		lo, hi int
		want   string
	}{
		{32768, 60999, "[[20000 32767] [61000 65535]]"},
		{1024, 65535, "[[20000 65535]]"}, // nothing left: share it
		{40000, 65535, "[[20000 39999]]"},
		{10000, 30000, "[[30001 65535]]"},
	} {
		if got := fmtRanges(portRanges(tc.lo, tc.hi)); got != tc.want {
			t.Errorf("ephemeral %d-%d: ranges %s, want %s", tc.lo, tc.hi, got, tc.want)
		}
	}
}

func fmtRanges(r [][2]int) string {
	var parts []string
	for _, x := range r {
		parts = append(parts, "["+strconv.Itoa(x[0])+" "+strconv.Itoa(x[1])+"]")
	}
	return "[" + strings.Join(parts, " ") + "]"
}
