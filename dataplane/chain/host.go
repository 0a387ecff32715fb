package chain

import "strings"

// ServiceName extracts the mesh service name from a Host or :authority
// value: "orders", "orders.mesh", "orders.service.consul" and
// "orders.service.<dc>.consul", with or without a port, in any case. It
// returns "" when host names no service.
func ServiceName(host string) string {
	host = stripPort(host)
	host = strings.TrimSuffix(host, ".") // fully qualified
	if host == "" {
		return ""
	}
	host = strings.ToLower(host) // does not allocate when already lower case
	if name, ok := strings.CutSuffix(host, ".mesh"); ok {
		return name
	}
	if rest, ok := strings.CutSuffix(host, ".consul"); ok {
		// orders.service or orders.service.<dc>
		if name, ok := strings.CutSuffix(rest, ".service"); ok {
			return name
		}
		if i := strings.LastIndexByte(rest, '.'); i > 0 {
			if name, ok := strings.CutSuffix(rest[:i], ".service"); ok {
				return name
			}
		}
		return ""
	}
	return host
}

// stripPort removes a :port suffix, keeping IPv6 literals intact.
func stripPort(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i > 0 {
			return host[1:i]
		}
		return host
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		return host[:i]
	}
	return host
}
