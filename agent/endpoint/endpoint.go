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
}

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
