package config

import (
	"net/url"
	"time"
)

// Control configures `mesh control`, the xDS server and its sources.
type Control struct {
	XDSAddr   string `mapstructure:"xds_addr" yaml:"xds_addr"`
	AdminAddr string `mapstructure:"admin_addr" yaml:"admin_addr"`
	// Debounce coalesces source updates before a snapshot is rebuilt.
	Debounce time.Duration `mapstructure:"debounce" yaml:"debounce"`
	CMDB     CMDB          `mapstructure:"cmdb" yaml:"cmdb"`
}

// CMDB configures the machine-metadata poller. An empty URL disables it.
type CMDB struct {
	URL      string        `mapstructure:"url" yaml:"url"`
	Interval time.Duration `mapstructure:"interval" yaml:"interval"`
	// Format is "generic" (a JSON list of hosts, fields mapped by Fields)
	// or "netbox" (NetBox's REST API; URL is NetBox's base URL).
	Format string `mapstructure:"format" yaml:"format"`
	// TokenFile holds the API token; MESH_CMDB_TOKEN overrides Token.
	TokenFile string        `mapstructure:"token_file" yaml:"token_file"`
	Token     string        `mapstructure:"token" yaml:"token,omitempty" secret:"true"`
	Timeout   time.Duration `mapstructure:"timeout" yaml:"timeout"`
	// MaxBytes bounds one response body.
	MaxBytes int64 `mapstructure:"max_bytes" yaml:"max_bytes"`
	// DrainingStatuses are host statuses that make endpoints DRAINING.
	DrainingStatuses []string `mapstructure:"draining_statuses" yaml:"draining_statuses"`
	// ListField names the field holding the host list when the generic
	// payload is an object rather than a list (e.g. "results", "data.hosts").
	ListField string     `mapstructure:"list_field" yaml:"list_field"`
	Fields    CMDBFields `mapstructure:"fields" yaml:"fields"`
}

// CMDBFields maps generic CMDB host fields (dotted paths) onto mesh's names.
type CMDBFields struct {
	IP       string `mapstructure:"ip" yaml:"ip"`
	Hostname string `mapstructure:"hostname" yaml:"hostname"`
	Region   string `mapstructure:"region" yaml:"region"`
	Zone     string `mapstructure:"zone" yaml:"zone"`
	Env      string `mapstructure:"env" yaml:"env"`
	Owner    string `mapstructure:"owner" yaml:"owner"`
	Status   string `mapstructure:"status" yaml:"status"`
	Labels   string `mapstructure:"labels" yaml:"labels"`
}

func (c *Control) validate(v *validator) {
	v.hostPort("control.xds_addr", c.XDSAddr)
	v.hostPort("control.admin_addr", c.AdminAddr)
	v.nonNegative("control.debounce", c.Debounce)
	if c.CMDB.URL != "" {
		u, err := url.Parse(c.CMDB.URL)
		v.check("control.cmdb.url", err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "",
			"must be an http:// or https:// URL, got %q", c.CMDB.URL)
	}
	v.positive("control.cmdb.interval", c.CMDB.Interval)
	v.oneOf("control.cmdb.format", c.CMDB.Format, "generic", "netbox")
	v.positive("control.cmdb.timeout", c.CMDB.Timeout)
	v.check("control.cmdb.max_bytes", c.CMDB.MaxBytes > 0, "must be positive, got %d", c.CMDB.MaxBytes)
	v.check("control.cmdb.fields.ip", c.CMDB.Fields.IP != "", "is required: hosts join endpoints by IP")
}
