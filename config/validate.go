package config

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Role selects which required fields Validate insists on.
type Role int

const (
	// RoleAny checks every section's syntax; agent fields are required only
	// when the agent section names a service or port.
	RoleAny Role = iota
	// RoleAgent requires agent.service and agent.app_port.
	RoleAgent
	// RoleControl checks what `mesh control` needs.
	RoleControl
)

// Validate checks the config for role and returns an *Error listing every
// problem, or nil.
func (c *Config) Validate(role Role) error {
	v := &validator{}
	v.oneOf("log.level", c.Log.Level, "trace", "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "text")
	v.hostPort("consul.addr", strings.TrimPrefix(strings.TrimPrefix(c.Consul.Addr, "http://"), "https://"))
	c.Agent.validate(v, role == RoleAgent)
	c.Control.validate(v)
	c.Policies.validate(v)
	c.Observability.validate(v)
	if len(v.errs) == 0 {
		return nil
	}
	return &Error{Fields: v.errs}
}

var serviceNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

type validator struct{ errs []FieldError }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) check(path string, ok bool, format string, args ...any) bool {
	if !ok {
		v.add(path, format, args...)
	}
	return ok
}

func (v *validator) hostPort(path, s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.add(path, "%q is not HOST:PORT: %v", s, strings.TrimPrefix(err.Error(), "address "+s+": "))
		return false
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		v.add(path, "%q has an invalid port %q", s, port)
		return false
	}
	if host != "" && net.ParseIP(host) == nil && !hostnameRE.MatchString(host) {
		v.add(path, "%q has an invalid host %q", s, host)
		return false
	}
	return true
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

func (v *validator) host(path, s string) {
	v.check(path, net.ParseIP(s) != nil || hostnameRE.MatchString(s), "%q is not an IP address or host name", s)
}

func (v *validator) ip(path, s string) {
	v.check(path, net.ParseIP(s) != nil, "%q is not an IP address", s)
}

func (v *validator) serviceName(path, s string) {
	v.check(path, serviceNameRE.MatchString(s),
		"%q is not a valid service name (lowercase letters, digits and '-', at most 63, as in DNS)", s)
}

func (v *validator) oneOf(path, s string, allowed ...string) {
	v.check(path, slices.Contains(allowed, s), "%q is not one of %s", s, strings.Join(allowed, ", "))
}

func (v *validator) positive(path string, d time.Duration) {
	v.check(path, d > 0, "must be a positive duration, got %s", d)
}

func (v *validator) nonNegative(path string, d time.Duration) {
	v.check(path, d >= 0, "must not be negative, got %s", d)
}
