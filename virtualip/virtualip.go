// Package virtualip allocates the stable virtual IP of every mesh service
// from a configured range (240.0.0.0/4 by default, as Consul). An app
// resolves <service>.mesh to it and connects; transparent interception
// recognises the address and routes the connection to the service.
//
// The allocation is a pure function of the range and the set of service
// names, so every control plane replica and every restart computes the
// same answer, and an agent without a control plane computes it from the
// Consul catalog the same way: each name hashes (FNV-1a 64) to an offset
// in the range; names are placed in sorted order, and a name whose slot
// is taken probes the next offsets. Without collisions (the common case in
// a range of 2^28 addresses) a service's address depends on its name
// alone, and never changes while the service exists.
package virtualip

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
)

// Range is a block of IPv4 addresses to allocate from.
type Range struct {
	base netip.Addr
	size uint64
}

// ParseRange parses an IPv4 CIDR of at least 256 addresses.
func ParseRange(cidr string) (Range, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Range{}, fmt.Errorf("virtual IP range %q: %w", cidr, err)
	}
	if !p.Addr().Is4() || p.Bits() > 24 {
		return Range{}, fmt.Errorf("virtual IP range %q: want an IPv4 CIDR of at least 256 addresses", cidr)
	}
	return Range{base: p.Masked().Addr(), size: 1 << (32 - p.Bits())}, nil
}

// Contains reports whether a is in the range.
func (r Range) Contains(a netip.Addr) bool {
	if !a.Is4() || !r.base.IsValid() {
		return false
	}
	off := uint64(u32(a)) - uint64(u32(r.base))
	return uint64(u32(a)) >= uint64(u32(r.base)) && off < r.size
}

// Hashed is the address of name when no other name collides with it:
// what Allocate gives it in the common case.
func (r Range) Hashed(name string) netip.Addr { return r.at(r.offset(name)) }

// Allocate gives every name its address (see the package doc).
func (r Range) Allocate(names []string) map[string]netip.Addr {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	taken := make(map[uint64]bool, len(sorted))
	out := make(map[string]netip.Addr, len(sorted))
	usable := r.size - 2
	for _, name := range sorted {
		off := r.offset(name)
		for i := uint64(0); taken[off] && i < usable; i++ {
			off = 1 + (off-1+1)%usable
		}
		taken[off] = true
		out[name] = r.at(off)
	}
	return out
}

// offset is in [1, size-2]: never the range's first or last address.
func (r Range) offset(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return 1 + h.Sum64()%(r.size-2)
}

func (r Range) at(off uint64) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u32(r.base)+uint32(off))
	return netip.AddrFrom4(b)
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}
