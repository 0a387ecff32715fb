package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/meshvm/mesh/identity"
)

// Control configures `mesh control`, the xDS server and its sources.
type Control struct {
	XDSAddr   string `mapstructure:"xds_addr" yaml:"xds_addr"`
	AdminAddr string `mapstructure:"admin_addr" yaml:"admin_addr"`
	// Debounce bounds snapshot rebuilds to one per interval: an update
	// after a quiet interval is built at once, later ones are coalesced.
	Debounce time.Duration `mapstructure:"debounce" yaml:"debounce"`
	// LoadReportingInterval is how often proxies report their load (LRS
	// load_reporting_interval).
	LoadReportingInterval time.Duration `mapstructure:"load_reporting_interval" yaml:"load_reporting_interval" min:"1s"`
	CMDB                  CMDB          `mapstructure:"cmdb" yaml:"cmdb"`
	// CA is the certificate authority issuing workload identities.
	CA CA `mapstructure:"ca" yaml:"ca"`
	// XDS secures the xDS port: TLS with a certificate from CA, and who
	// may connect.
	XDS XDS `mapstructure:"xds" yaml:"xds"`
	// Kubernetes is the Kubernetes source and the export of VM services
	// into Kubernetes.
	Kubernetes Kubernetes `mapstructure:"kubernetes" yaml:"kubernetes"`
	// MTLS is the mTLS mode between agents; Services holds per-service
	// settings (their mtls_mode).
	MTLS     MTLS                       `mapstructure:"mtls" yaml:"mtls"`
	Services map[string]ServiceSettings `mapstructure:"services" yaml:"services"`
	// Gateway holds the routes and authentication pushed to mesh gateways.
	Gateway ControlGateway `mapstructure:"gateway" yaml:"gateway"`
	// Authorization has the access policy of each callee service that
	// has one (authorization.go); a service without one serves every
	// caller.
	Authorization []Authorization `mapstructure:"authorization" yaml:"authorization"`
	// VirtualIPs is the allocation of service virtual IPs (interception.go).
	VirtualIPs VirtualIPs `mapstructure:"virtual_ips" yaml:"virtual_ips"`
}

// CA configures mesh control's certificate authority (controlplane/ca).
type CA struct {
	// Dir holds the CA's material, generated at first use; control planes
	// of one mesh share its files.
	Dir string `mapstructure:"dir" yaml:"dir"`
	// TrustDomain and Namespace name identities:
	// spiffe://<trust_domain>/ns/<namespace>/svc/<service>.
	TrustDomain string `mapstructure:"trust_domain" yaml:"trust_domain"`
	Namespace   string `mapstructure:"namespace" yaml:"namespace"`
	// CertTTL is the lifetime of issued workload certificates.
	CertTTL time.Duration `mapstructure:"cert_ttl" yaml:"cert_ttl"`
	// CertFile and KeyFile, both or neither, are an operator's CA (a root,
	// or an intermediate followed by its chain) used instead of a root
	// generated in Dir.
	CertFile string `mapstructure:"cert_file" yaml:"cert_file,omitempty"`
	KeyFile  string `mapstructure:"key_file" yaml:"key_file,omitempty"`
}

// XDS configures the protection of the xDS port (control.xds_addr).
type XDS struct {
	// Auth is off (no client is checked), optional (clients with a mesh
	// certificate or a join token are checked and bound to their
	// identity; plaintext clients without either are still served, for
	// migration) or required (TLS only, every client authenticated).
	Auth string `mapstructure:"auth" yaml:"auth"`
	// TLSSANs are the DNS names and IP addresses put in the server
	// certificate besides its SPIFFE ID, for clients that verify host
	// names (gRPC proxyless, Envoy). Default: localhost, 127.0.0.1 and
	// the host of xds_addr when it is not a wildcard.
	TLSSANs []string `mapstructure:"tls_sans" yaml:"tls_sans"`
}

// Kubernetes configures the Kubernetes source: Services and EndpointSlices
// read through shared informers, and optionally the mesh's Consul services
// written back as selector-less Services in ExportNamespace.
type Kubernetes struct {
	// Enabled turns the source on; a Kubeconfig (--kubeconfig) turns it on
	// too.
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// Kubeconfig is a kubeconfig file; empty means the in-cluster config
	// (the pod's service account), else $KUBECONFIG.
	Kubeconfig string `mapstructure:"kubeconfig" yaml:"kubeconfig,omitempty"`
	// Namespaces to watch; empty means all.
	Namespaces []string `mapstructure:"namespaces" yaml:"namespaces"`
	// LabelSelector selects the Services read (Kubernetes syntax, e.g.
	// "mesh.meshvm.io/expose=true,tier!=batch"); empty means all.
	LabelSelector string `mapstructure:"label_selector" yaml:"label_selector,omitempty"`
	// DefaultNamespace's services are also reachable by their bare name
	// (orders as well as orders.shop), and merge with Consul services of
	// that name.
	DefaultNamespace string `mapstructure:"default_namespace" yaml:"default_namespace,omitempty"`
	// ExportNamespace receives a selector-less Service and EndpointSlices
	// for each mesh service from Consul; empty disables the export.
	ExportNamespace string `mapstructure:"export_namespace" yaml:"export_namespace,omitempty"`
	// Nodes reads Node labels (topology.kubernetes.io/region and zone) for
	// the locality EndpointSlices do not carry (the region). It needs
	// list and watch on nodes.
	Nodes bool `mapstructure:"nodes" yaml:"nodes"`
}

// On reports whether the Kubernetes source runs.
func (k Kubernetes) On() bool { return k.Enabled || k.Kubeconfig != "" }

// CMDB configures the machine-metadata poller. An empty URL disables it.
type CMDB struct {
	URL      string        `mapstructure:"url" yaml:"url"`
	Interval time.Duration `mapstructure:"interval" yaml:"interval" min:"100ms"`
	// Format is "generic" (a JSON list of hosts, fields mapped by Fields)
	// or "netbox" (NetBox's REST API; URL is NetBox's base URL).
	Format string `mapstructure:"format" yaml:"format"`
	// TokenFile holds the API token; MESH_CMDB_TOKEN overrides Token.
	TokenFile string        `mapstructure:"token_file" yaml:"token_file"`
	Token     string        `mapstructure:"token" yaml:"token,omitempty" secret:"true"`
	Timeout   time.Duration `mapstructure:"timeout" yaml:"timeout"`
	// AuthHeader is the request header carrying the token; empty means
	// "Authorization".
	AuthHeader string `mapstructure:"auth_header" yaml:"auth_header,omitempty"`
	// AuthScheme prefixes the token in AuthHeader. Empty means the format's
	// default: "Bearer" for generic, "Token" for netbox (or "Bearer" for
	// NetBox v2 tokens, which start with "nbt_"); with a custom AuthHeader
	// the token is sent bare. "none" sends the token bare in any header.
	AuthScheme string `mapstructure:"auth_scheme" yaml:"auth_scheme,omitempty"`
	// MaxBytes bounds one response body.
	MaxBytes int64 `mapstructure:"max_bytes" yaml:"max_bytes"`
	// PageSize is NetBox's ?limit= per page; 0 means 1000 (NetBox caps it
	// at its MAX_PAGE_SIZE and paginates the rest).
	PageSize int `mapstructure:"page_size" yaml:"page_size,omitempty"`
	// MaxPages bounds the pages followed per NetBox list; 0 means 1000.
	MaxPages int `mapstructure:"max_pages" yaml:"max_pages,omitempty"`
	// DrainingStatuses are host statuses that make endpoints DRAINING.
	DrainingStatuses []string `mapstructure:"draining_statuses" yaml:"draining_statuses"`
	// ListField names the field holding the host list when the generic
	// payload is an object rather than a list (e.g. "results", "data.hosts").
	ListField string     `mapstructure:"list_field" yaml:"list_field"`
	Fields    CMDBFields `mapstructure:"fields" yaml:"fields"`
}

// CMDBFields maps generic CMDB host fields (dotted paths) onto mesh's names;
// an empty path leaves the field unset. For the netbox format only Env and
// Owner are used, as custom-field names (owner falls back to the tenant).
type CMDBFields struct {
	IP       string `mapstructure:"ip" yaml:"ip"`
	Hostname string `mapstructure:"hostname" yaml:"hostname"`
	Region   string `mapstructure:"region" yaml:"region"`
	Zone     string `mapstructure:"zone" yaml:"zone"`
	Env      string `mapstructure:"env" yaml:"env"`
	Owner    string `mapstructure:"owner" yaml:"owner"`
	Status   string `mapstructure:"status" yaml:"status"`
	Labels   string `mapstructure:"labels" yaml:"labels"`
	Role     string `mapstructure:"role" yaml:"role,omitempty"`
	Tenant   string `mapstructure:"tenant" yaml:"tenant,omitempty"`
	// Tags is a list of strings, or one comma-separated string.
	Tags string `mapstructure:"tags" yaml:"tags,omitempty"`
}

func (c *Control) validate(v *validator) {
	c.CA.validate(v)
	c.validateMTLS(v)
	c.validateTraffic(v)
	c.XDS.validate(v)
	c.Gateway.validate(v)
	validateAuthorization(v, c.Authorization)
	c.VirtualIPs.validate(v)
	v.hostPort("control.xds_addr", c.XDSAddr)
	v.hostPort("control.admin_addr", c.AdminAddr)
	v.nonNegative("control.debounce", c.Debounce)
	v.positive("control.load_reporting_interval", c.LoadReportingInterval)
	if c.CMDB.URL != "" {
		u, err := url.Parse(c.CMDB.URL)
		v.check("control.cmdb.url", err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "",
			"must be an http:// or https:// URL, got %q; write e.g. https://netbox.example.internal", c.CMDB.URL)
	}
	v.positive("control.cmdb.interval", c.CMDB.Interval)
	v.oneOf("control.cmdb.format", c.CMDB.Format, "generic", "netbox")
	v.positive("control.cmdb.timeout", c.CMDB.Timeout)
	v.check("control.cmdb.max_bytes", c.CMDB.MaxBytes > 0, "must be more than 0, got %d; write e.g. 33554432 (32 MiB)", c.CMDB.MaxBytes)
	v.check("control.cmdb.fields.ip", c.CMDB.Fields.IP != "", "is required: hosts join endpoints by IP")
	v.check("control.cmdb.page_size", c.CMDB.PageSize >= 0, "must not be negative, got %d", c.CMDB.PageSize)
	v.check("control.cmdb.max_pages", c.CMDB.MaxPages >= 0, "must not be negative, got %d", c.CMDB.MaxPages)
	v.check("control.cmdb.auth_header", c.CMDB.AuthHeader == "" || headerNameRE.MatchString(c.CMDB.AuthHeader),
		"%q is not a valid HTTP header name", c.CMDB.AuthHeader)
	v.check("control.cmdb.auth_scheme", !strings.ContainsAny(c.CMDB.AuthScheme, " \t\r\n"),
		"%q must be one word", c.CMDB.AuthScheme)
	v.dottedPath("control.cmdb.list_field", c.CMDB.ListField)
	f := c.CMDB.Fields
	for _, p := range []struct{ key, path string }{
		{"ip", f.IP}, {"hostname", f.Hostname}, {"region", f.Region}, {"zone", f.Zone},
		{"env", f.Env}, {"owner", f.Owner}, {"status", f.Status}, {"labels", f.Labels},
		{"role", f.Role}, {"tenant", f.Tenant}, {"tags", f.Tags},
	} {
		v.dottedPath("control.cmdb.fields."+p.key, p.path)
	}
	k := c.Kubernetes
	for i, ns := range k.Namespaces {
		v.check(fmt.Sprintf("control.kubernetes.namespaces[%d]", i), namespaceRE.MatchString(ns),
			"%q is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)", ns)
	}
	for _, f := range []struct{ key, ns string }{
		{"default_namespace", k.DefaultNamespace}, {"export_namespace", k.ExportNamespace},
	} {
		v.check("control.kubernetes."+f.key, f.ns == "" || namespaceRE.MatchString(f.ns),
			"%q is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)", f.ns)
	}
	v.check("control.kubernetes.label_selector", !strings.ContainsAny(k.LabelSelector, "\n\r"),
		"%q must be one line", k.LabelSelector)
}

// namespaceRE matches a Kubernetes namespace name (an RFC 1123 label).
var namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// headerNameRE matches an HTTP field name (RFC 9110 token).
var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// dottedPath checks a CMDB field path such as "net.primary_ip": empty, or
// dot-separated non-empty segments.
func (v *validator) dottedPath(path, s string) {
	v.check(path, s == "" || !slices.Contains(strings.Split(s, "."), ""),
		"%q is not a dotted path (empty segment)", s)
}

func (x *XDS) validate(v *validator) {
	v.oneOf("control.xds.auth", x.Auth, "off", "optional", "required")
	for i, s := range x.TLSSANs {
		v.check(fmt.Sprintf("control.xds.tls_sans[%d]", i), s != "" && !strings.ContainsAny(s, " /:*") || net.ParseIP(s) != nil,
			"%q is neither a DNS name nor an IP address", s)
	}
}

func (c *CA) validate(v *validator) {
	v.check("control.ca.dir", c.Dir != "", "is required (e.g. /var/lib/mesh/ca)")
	if _, err := identity.NewID(c.TrustDomain, c.Namespace, "x"); err != nil {
		path := "control.ca.trust_domain"
		if strings.HasPrefix(err.Error(), "namespace") {
			path = "control.ca.namespace"
		}
		v.add(path, "%v", err)
	}
	v.check("control.ca.cert_ttl", c.CertTTL >= time.Second, "must be at least 1s (e.g. 24h; under a few minutes only for tests), got %v", c.CertTTL)
	v.check("control.ca.key_file", (c.CertFile == "") == (c.KeyFile == ""), "cert_file and key_file go together")
}
