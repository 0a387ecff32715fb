// Package endpoint defines what the agent knows about the instances of a
// service and the one question the data path asks about them. Discovery
// (Consul-direct, later xDS) answers it; routing consumes it.
package endpoint

import (
	"context"
	"errors"
)

// Endpoint is one instance of a service: the address of its agent's inbound
// listener, and where it runs.
type Endpoint struct {
	// Addr is host:port of the instance's agent inbound listener.
	Addr   string
	Node   string
	Region string
	Zone   string
	// Weight is the relative load-balancing weight, 0 meaning 1.
	Weight uint32
	// Meta is instance metadata (Consul service meta, CMDB labels).
	Meta map[string]string
	// Protocol is what the instance's app speaks, as its agent registered
	// it; Unknown means "send what the caller sent" and let the callee's
	// agent adapt.
	Protocol Protocol
}

// Protocol is an app protocol as the data path uses it.
type Protocol uint8

// App protocols. Unknown covers "auto" and instances registered by agents
// that do not say.
const (
	Unknown Protocol = iota
	HTTP1
	HTTP2
	GRPC
	TCP
)

// ParseProtocol maps a registered app protocol (config.AppProtocol*
// values) onto a Protocol; anything else is Unknown.
func ParseProtocol(s string) Protocol {
	switch s {
	case "http1":
		return HTTP1
	case "http2":
		return HTTP2
	case "grpc":
		return GRPC
	case "tcp":
		return TCP
	}
	return Unknown
}

// String is the registered name ("auto" for Unknown).
func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	case GRPC:
		return "grpc"
	case TCP:
		return "tcp"
	}
	return "auto"
}

// MarshalText writes the registered name (config_dump).
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// SpeaksH2 reports whether the app takes HTTP/2 (h2c).
func (p Protocol) SpeaksH2() bool { return p == HTTP2 || p == GRPC }

// ErrUnknownService means no instance of the service is known at all
// (answered with 503 and x-mesh-reason: no-route).
var ErrUnknownService = errors.New("unknown service")

// Resolver returns a service's healthy endpoints. It is on the request
// path: after the first lookup of a service it must answer from memory
// without allocating. The first lookup of a service may block until the
// endpoints are known or ctx is done. The returned slice is shared and
// must not be modified.
//
// It returns ErrUnknownService when the service does not exist, and an
// empty slice when it exists but no instance is healthy.
type Resolver interface {
	Resolve(ctx context.Context, service string) ([]Endpoint, error)
}
