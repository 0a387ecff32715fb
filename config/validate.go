package config

import (
	"fmt"
	"net"
	"reflect"
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
	// RoleGateway requires a certificate source for the HTTPS listener.
	RoleGateway
)

// Validate checks the config for role and returns an *Error listing every
// problem, or nil.
func (c *Config) Validate(role Role) error {
	v := &validator{}
	v.durations(reflect.ValueOf(c).Elem(), "")
	v.oneOf("log.level", c.Log.Level, "trace", "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "text")
	v.hostPort("consul.addr", strings.TrimPrefix(strings.TrimPrefix(c.Consul.Addr, "http://"), "https://"))
	c.Agent.validate(v, role == RoleAgent, c.Consul.Token)
	c.Control.validate(v)
	c.Gateway.validate(v, role == RoleGateway)
	c.Policies.validate(v)
	c.Observability.validate(v)
	if len(v.errs) == 0 {
		return nil
	}
	return &Error{Fields: v.errs}
}

var serviceNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validator collects one problem per field: the first found.
type validator struct{ errs []FieldError }

func (v *validator) add(path, format string, args ...any) {
	for _, e := range v.errs {
		if e.Path == path {
			return
		}
	}
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
		why := strings.TrimPrefix(err.Error(), "address "+s+": ")
		if ae, ok := err.(*net.AddrError); ok {
			why = ae.Err
		}
		v.add(path, "%q is not HOST:PORT: %s; write e.g. %s", s, why, hostPortExample(path))
		return false
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		v.add(path, "%q has an invalid port %q (0 to 65535); write e.g. %s", s, port, hostPortExample(path))
		return false
	}
	if host != "" && net.ParseIP(host) == nil && !hostnameRE.MatchString(host) {
		v.add(path, "%q has an invalid host %q; write e.g. %s", s, host, hostPortExample(path))
		return false
	}
	return true
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// hostPortExample is the field's default, or a loopback address.
func hostPortExample(path string) string {
	if d, ok := defaultAt(path); ok && d.Kind() == reflect.String && d.String() != "" {
		return d.String()
	}
	return "127.0.0.1:8080"
}

func (v *validator) host(path, s string) {
	v.check(path, net.ParseIP(s) != nil || hostnameRE.MatchString(s), "%q is not an IP address or host name; write e.g. 127.0.0.1", s)
}

func (v *validator) ip(path, s string) {
	v.check(path, net.ParseIP(s) != nil, "%q is not an IP address; write e.g. 10.0.0.5", s)
}

func (v *validator) serviceName(path, s string) {
	v.check(path, serviceNameRE.MatchString(s),
		"%q is not a valid service name (lowercase letters, digits and '-', at most 63, as in DNS); write e.g. orders", s)
}

// meshServiceName checks a name a caller or a policy uses: a service
// name, or one with its Kubernetes namespace (orders.shop).
func (v *validator) meshServiceName(path, s string) {
	name, ns, dotted := strings.Cut(s, ".")
	v.check(path, serviceNameRE.MatchString(name) && (!dotted || serviceNameRE.MatchString(ns)),
		"%q is not a valid service name (lowercase letters, digits and '-', at most 63, as in DNS, optionally followed by '.' and a namespace); write e.g. orders or orders.shop", s)
}

func (v *validator) oneOf(path, s string, allowed ...string) {
	v.check(path, slices.Contains(allowed, s), "%q is not one of %s", s, strings.Join(allowed, ", "))
}

func (v *validator) notNegative(path string, n int) {
	v.check(path, n >= 0, "must not be negative, got %d", n)
}

func (v *validator) positive(path string, d time.Duration) {
	v.check(path, d > 0, "must be more than 0, got %s; write e.g. %s", d, exampleFor(path, durType))
}

func (v *validator) nonNegative(path string, d time.Duration) {
	v.check(path, d >= 0, "must not be negative, got %s; write e.g. %s", d, exampleFor(path, durType))
}

// defaultFloor is the shortest duration any field accepts, 0 aside. A
// field's `min` tag raises it (health checks, polls, token refills).
const defaultFloor = time.Millisecond

// durations checks every duration in the schema, found by its type: none
// may be negative, and none but 0 may be shorter than its field's floor.
// Whether 0 is allowed is each field's own check.
func (v *validator) durations(rv reflect.Value, path string) {
	switch rv.Kind() {
	case reflect.Struct:
		t := rv.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			p := joinPath(path, f.Tag.Get("mapstructure"))
			fv := rv.Field(i)
			if f.Type != durType {
				v.durations(fv, p)
				continue
			}
			d := time.Duration(fv.Int())
			floor := defaultFloor
			if m, err := time.ParseDuration(f.Tag.Get("min")); err == nil {
				floor = m
			}
			switch {
			case d < 0:
				v.add(p, "must not be negative, got %s; write e.g. %s", d, exampleFor(p, durType))
			case d != 0 && d < floor:
				v.add(p, "%s is below the minimum of %s; write e.g. %s", shortDuration(d), shortDuration(floor), exampleFor(p, durType))
			}
		}
	case reflect.Slice:
		for i := 0; i < rv.Len(); i++ {
			v.durations(rv.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		keys := rv.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			v.durations(rv.MapIndex(k), joinPath(path, k.String()))
		}
	}
}
