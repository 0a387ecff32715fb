package cmdb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/meshvm/mesh/config"
)

// Defaults for zero-valued config fields.
const (
	defaultTimeout  = 10 * time.Second
	defaultMaxBytes = 32 << 20
)

// Generic reads any CMDB that serves its hosts as one JSON document: a list
// of host objects, or an object holding that list under cfg.ListField.
// Host fields are found by the dotted paths in cfg.Fields; a numeric path
// segment indexes a list ("addresses.0"). Labels is an object whose values
// are turned into strings (nested objects as dotted keys, lists of scalars
// comma-joined, anything else as compact JSON).
type Generic struct {
	url       *url.URL
	get       *getter
	listField string
	fields    config.CMDBFields
}

// NewGeneric checks cfg (URL, field mapping) and builds a generic fetcher.
// client may be nil.
func NewGeneric(cfg config.CMDB, client *http.Client) (*Generic, error) {
	u, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("cmdb generic: %w", err)
	}
	if cfg.Fields.IP == "" {
		return nil, fmt.Errorf("cmdb generic: fields.ip is required: hosts join endpoints by IP")
	}
	f := cfg.Fields
	for _, p := range []struct{ name, path string }{
		{"list_field", cfg.ListField},
		{"fields.ip", f.IP}, {"fields.hostname", f.Hostname}, {"fields.region", f.Region},
		{"fields.zone", f.Zone}, {"fields.env", f.Env}, {"fields.owner", f.Owner},
		{"fields.status", f.Status}, {"fields.labels", f.Labels}, {"fields.role", f.Role},
		{"fields.tenant", f.Tenant}, {"fields.tags", f.Tags},
	} {
		if p.path != "" && slices.Contains(strings.Split(p.path, "."), "") {
			return nil, fmt.Errorf("cmdb generic: %s: %q is not a dotted path (empty segment)", p.name, p.path)
		}
	}
	header, scheme := authOf(cfg, "Bearer")
	return &Generic{
		url:       u,
		get:       newGetter(client, header, scheme, cfg.Token, orDuration(cfg.Timeout, defaultTimeout), orInt64(cfg.MaxBytes, defaultMaxBytes)),
		listField: cfg.ListField,
		fields:    f,
	}, nil
}

// Fetch GETs the URL and decodes the hosts.
func (g *Generic) Fetch(ctx context.Context) ([]Host, error) {
	body, ct, err := g.get.get(ctx, g.url)
	if err != nil {
		return nil, fmt.Errorf("cmdb generic: %w", err)
	}
	hosts, err := g.decode(body)
	if err != nil && !IsSkipped(err) {
		return nil, jsonError(ct, err)
	}
	return hosts, err
}

// decode turns a payload into hosts: the pure half of Fetch.
func (g *Generic) decode(data []byte) ([]Host, error) {
	root, err := parseJSON(data)
	if err != nil {
		return nil, fmt.Errorf("cmdb generic: %w", err)
	}
	list, err := g.list(root)
	if err != nil {
		return nil, fmt.Errorf("cmdb generic: %w", err)
	}
	s := &skips{records: len(list)}
	hosts := make([]Host, 0, len(list))
	for i, rec := range list {
		h, err := g.host(rec)
		if err != nil {
			if h.Hostname != "" {
				s.add("host[%d] %q: %v", i, h.Hostname, err)
			} else {
				s.add("host[%d]: %v", i, err)
			}
			continue
		}
		hosts = append(hosts, h)
	}
	hosts = dedup(hosts, s)
	hosts, err = s.result("cmdb generic", hosts)
	if err != nil && IsSkipped(err) {
		return hosts, fmt.Errorf("cmdb generic: %w", err)
	}
	return hosts, err
}

// list finds the host list in the payload.
func (g *Generic) list(root any) ([]any, error) {
	if g.listField == "" {
		list, ok := root.([]any)
		if !ok {
			return nil, fmt.Errorf("payload: expected a list of hosts, got %s (set list_field if the list is inside an object)", kind(root))
		}
		return list, nil
	}
	if _, ok := root.(map[string]any); !ok {
		return nil, fmt.Errorf("payload: expected an object holding field %q, got %s", g.listField, kind(root))
	}
	v, ok, err := lookup(root, g.listField)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("field %q: missing", g.listField)
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("field %q: expected a list, got %s", g.listField, kind(v))
	}
	return list, nil
}

// host maps one record. On error the returned Host carries the hostname,
// when known, to name the record in the report.
func (g *Generic) host(rec any) (Host, error) {
	if _, ok := rec.(map[string]any); !ok {
		return Host{}, fmt.Errorf("expected an object, got %s", kind(rec))
	}
	var h Host
	var err error
	if h.Hostname, err = str(rec, g.fields.Hostname); err != nil {
		return h, err
	}
	ipv, ok, err := lookup(rec, g.fields.IP)
	if err != nil {
		return h, err
	}
	if !ok || ipv == nil {
		return h, fmt.Errorf("field %q: missing", g.fields.IP)
	}
	ips, isStr := ipv.(string)
	if !isStr {
		return h, fmt.Errorf("field %q: expected an IP address string, got %s", g.fields.IP, kind(ipv))
	}
	if h.IP, err = parseIP(ips); err != nil {
		return h, fmt.Errorf("field %q: %v", g.fields.IP, err)
	}
	for _, f := range []struct {
		dst  *string
		path string
	}{
		{&h.Region, g.fields.Region}, {&h.Zone, g.fields.Zone}, {&h.Env, g.fields.Env},
		{&h.Owner, g.fields.Owner}, {&h.Status, g.fields.Status}, {&h.Role, g.fields.Role},
		{&h.Tenant, g.fields.Tenant},
	} {
		if *f.dst, err = str(rec, f.path); err != nil {
			return h, err
		}
	}
	h.Status = strings.ToLower(strings.TrimSpace(h.Status))
	if h.Tags, err = tags(rec, g.fields.Tags); err != nil {
		return h, err
	}
	if g.fields.Labels != "" {
		v, _, err := lookup(rec, g.fields.Labels)
		if err != nil {
			return h, err
		}
		switch lv := v.(type) {
		case nil:
		case map[string]any:
			if len(lv) > 0 {
				h.Labels = make(map[string]string, len(lv))
				flatten(h.Labels, "", lv, 0)
			}
		default:
			return h, fmt.Errorf("field %q: expected an object, got %s", g.fields.Labels, kind(v))
		}
	}
	return h, nil
}

// str reads a scalar field by path; an empty path or a missing field is "".
func str(rec any, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	v, _, err := lookup(rec, path)
	if err != nil {
		return "", err
	}
	s, err := scalar(v)
	if err != nil {
		return "", fmt.Errorf("field %q: %v", path, err)
	}
	return strings.TrimSpace(s), nil
}

// tags reads a list of scalars, or one comma-separated string.
func tags(rec any, path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	v, _, err := lookup(rec, path)
	if err != nil {
		return nil, err
	}
	var out []string
	switch x := v.(type) {
	case nil:
	case string:
		for t := range strings.SplitSeq(x, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	case []any:
		for _, e := range x {
			s, err := scalar(e)
			if err != nil {
				return nil, fmt.Errorf("field %q: list element: %v", path, err)
			}
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	default:
		return nil, fmt.Errorf("field %q: expected a list of strings, got %s", path, kind(v))
	}
	return out, nil
}

// parseBaseURL accepts an absolute http(s) URL.
func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the url.Error would repeat the URL, password and all
		}
		return nil, fmt.Errorf("url: not a URL: %v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url: must be an http:// or https:// URL, got %q", u.Redacted())
	}
	return u, nil
}

// authOf returns the auth header and scheme, given the format's default
// scheme for the Authorization header.
func authOf(cfg config.CMDB, defaultScheme string) (header, scheme string) {
	header = cfg.AuthHeader
	if header == "" {
		header = "Authorization"
	}
	scheme = cfg.AuthScheme
	if scheme == "" && strings.EqualFold(header, "Authorization") {
		scheme = defaultScheme
	}
	return header, scheme
}

func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func orInt64(n, def int64) int64 {
	if n > 0 {
		return n
	}
	return def
}
