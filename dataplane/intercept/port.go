package intercept

import "unsafe"

// unsafePort views a sockaddr's port field (network byte order) as bytes.
func unsafePort(p *uint16) unsafe.Pointer { return unsafe.Pointer(p) }

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// which x/sys/unix does not name; it equals SO_ORIGINAL_DST (80).
const ip6tSoOriginalDst = 80
