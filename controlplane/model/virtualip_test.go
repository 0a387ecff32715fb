package model

import (
	"testing"

	"github.com/meshvm/mesh/virtualip"
)

func TestMergeAssignsVirtualIPs(t *testing.T) {
	m := Model{Services: []Service{{Name: "orders"}, {Name: "web"}}}
	assignVirtualIPs(&m, "240.0.0.0/4")
	r, _ := virtualip.ParseRange("240.0.0.0/4")
	for _, s := range m.Services {
		if s.VirtualIP != r.Hashed(s.Name) {
			t.Errorf("%s: %s, want %s (what an agent computes alone)", s.Name, s.VirtualIP, r.Hashed(s.Name))
		}
	}
	none := Model{Services: []Service{{Name: "orders"}}}
	assignVirtualIPs(&none, "")
	if none.Services[0].VirtualIP.IsValid() {
		t.Fatal("no range, yet an address")
	}
}
