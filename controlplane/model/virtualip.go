package model

import "github.com/meshvm/mesh/virtualip"

// assignVirtualIPs gives every service of m its virtual IP from cidr,
// allocated over the whole set of names (package virtualip): the same
// model gives the same addresses on every replica and after a restart.
// An empty or invalid cidr (config validation refuses it) assigns none.
func assignVirtualIPs(m *Model, cidr string) {
	if cidr == "" {
		return
	}
	r, err := virtualip.ParseRange(cidr)
	if err != nil {
		return
	}
	names := make([]string, len(m.Services))
	for i := range m.Services {
		names[i] = m.Services[i].Name
	}
	vips := r.Allocate(names)
	for i := range m.Services {
		m.Services[i].VirtualIP = vips[m.Services[i].Name]
	}
}
