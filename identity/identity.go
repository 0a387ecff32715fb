// Package identity is the mesh's workload identity, the part both roles
// must agree on: SPIFFE IDs of services
// (spiffe://<trust_domain>/ns/<namespace>/svc/<service>), the key and
// certificate signing request an agent or gateway makes on its own VM (the
// key never leaves it), and the join tokens it presents to get its first
// certificate. Signing lives in the control plane (controlplane/ca); this
// package holds no secrets of its own.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Defaults of the identity settings.
const (
	DefaultTrustDomain = "mesh.local"
	DefaultNamespace   = "default"
)

// ID is a workload's SPIFFE ID.
type ID struct {
	TrustDomain string
	Namespace   string
	Service     string
}

// Valid names: a trust domain is a DNS-like name; namespaces and services
// are lower-case labels as Consul and Kubernetes allow them.
var (
	trustDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$`)
	segmentRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)
)

// NewID returns the ID of service in namespace of trust domain td,
// checking each part.
func NewID(td, namespace, service string) (ID, error) {
	id := ID{TrustDomain: td, Namespace: namespace, Service: service}
	return id, id.Validate()
}

// Validate reports what is wrong with id, if anything.
func (id ID) Validate() error {
	switch {
	case !trustDomainRE.MatchString(id.TrustDomain):
		return fmt.Errorf("trust domain %q: want a lower-case DNS name such as %s", id.TrustDomain, DefaultTrustDomain)
	case !segmentRE.MatchString(id.Namespace):
		return fmt.Errorf("namespace %q: want a lower-case name such as %s", id.Namespace, DefaultNamespace)
	case !segmentRE.MatchString(id.Service):
		return fmt.Errorf("service %q: want a lower-case name such as orders", id.Service)
	}
	return nil
}

// String is the SPIFFE ID URI.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/svc/" + id.Service
}

// URL is the SPIFFE ID as a URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/svc/" + id.Service}
}

// ParseID parses a SPIFFE ID of the mesh's form.
func ParseID(s string) (ID, error) {
	u, err := url.Parse(s)
	if err != nil {
		return ID{}, fmt.Errorf("spiffe id %q: %w", s, err)
	}
	return idFromURL(u)
}

func idFromURL(u *url.URL) (ID, error) {
	if u.Scheme != "spiffe" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return ID{}, fmt.Errorf("spiffe id %q: want spiffe://<trust_domain>/ns/<namespace>/svc/<service>", u.String())
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "svc" {
		return ID{}, fmt.Errorf("spiffe id %q: want the path /ns/<namespace>/svc/<service>", u.String())
	}
	id := ID{TrustDomain: u.Host, Namespace: parts[1], Service: parts[3]}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("spiffe id %q: %w", u.String(), err)
	}
	return id, nil
}

// FromCertificate returns the SPIFFE ID of a workload certificate: it
// must carry exactly one URI SAN, a mesh SPIFFE ID.
func FromCertificate(c *x509.Certificate) (ID, error) {
	return fromURIs(c.URIs)
}

func fromURIs(uris []*url.URL) (ID, error) {
	switch len(uris) {
	case 0:
		return ID{}, errors.New("no URI SAN: a workload certificate carries its SPIFFE ID as one")
	case 1:
		return idFromURL(uris[0])
	}
	return ID{}, fmt.Errorf("%d URI SANs: a workload certificate carries exactly one SPIFFE ID", len(uris))
}

// ForService is the identity of a mesh service name: orders in the given
// default namespace, orders.shop (a Kubernetes service orders in
// namespace shop) in shop. Every place that turns a service name into a
// SPIFFE ID (the CA, the mTLS peer check, authorization rules) uses it,
// so they agree.
func ForService(trustDomain, defaultNamespace, service string) (ID, error) {
	name, ns, dotted := strings.Cut(service, ".")
	if !dotted {
		ns = defaultNamespace
	} else if strings.Contains(ns, ".") {
		return ID{}, fmt.Errorf("service name %q: at most one '.' (service.namespace)", service)
	}
	return NewID(trustDomain, ns, name)
}

// ServiceName is the mesh service name of id, the inverse of ForService:
// orders for ns/<defaultNamespace>/svc/orders, orders.shop for
// ns/shop/svc/orders. An empty defaultNamespace is DefaultNamespace.
func (id ID) ServiceName(defaultNamespace string) string {
	if defaultNamespace == "" {
		defaultNamespace = DefaultNamespace
	}
	if id.Namespace == defaultNamespace {
		return id.Service
	}
	return id.Service + "." + id.Namespace
}
