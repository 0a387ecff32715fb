package virtualip

import (
	"net/netip"
	"testing"
)

func TestAllocate(t *testing.T) {
	r, err := ParseRange("240.0.0.0/4")
	if err != nil {
		t.Fatal(err)
	}
	a := r.Allocate([]string{"orders", "payments", "web"})
	b := r.Allocate([]string{"web", "orders", "payments", "orders"})
	for name, ip := range a {
		if b[name] != ip {
			t.Errorf("%s: %s then %s: the order of names changed the answer", name, ip, b[name])
		}
		if !r.Contains(ip) {
			t.Errorf("%s: %s outside the range", name, ip)
		}
		if ip != r.Hashed(name) {
			t.Errorf("%s: %s, hashed %s: no collision, so they must agree", name, ip, r.Hashed(name))
		}
	}
	if got := a["orders"]; got != r.Hashed("orders") || !got.IsValid() {
		t.Fatalf("orders: %s", got)
	}
}

func TestCollisionsProbe(t *testing.T) {
	r, err := ParseRange("10.99.0.0/24") // 254 usable: collisions certain
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 254 {
		names = append(names, "svc-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	got := r.Allocate(names)
	seen := map[netip.Addr]string{}
	for name, ip := range got {
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s both got %s", name, other, ip)
		}
		seen[ip] = name
		if ip == netip.MustParseAddr("10.99.0.0") || ip == netip.MustParseAddr("10.99.0.255") {
			t.Fatalf("%s got the range's edge %s", name, ip)
		}
	}
	if len(seen) != 254 {
		t.Fatalf("%d addresses for 254 names", len(seen))
	}
}

func TestParseRange(t *testing.T) {
	for _, bad := range []string{"", "240.0.0.0", "fd00::/8", "10.0.0.0/25"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
