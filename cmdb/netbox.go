package cmdb

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/meshvm/mesh/config"
)

// NetBox API list endpoints, relative to the base URL.
const (
	sitesPath   = "api/dcim/sites/"
	vmsPath     = "api/virtualization/virtual-machines/"
	devicesPath = "api/dcim/devices/"
)

// Defaults for NetBox paging.
const (
	defaultPageSize = 1000
	defaultMaxPages = 1000
)

// NetBox reads virtual machines and devices from NetBox's REST API
// (versions 3.x and 4.x). The config URL is NetBox's base URL (a trailing
// "/api" is accepted too).
//
// Mapping: IP is primary_ip4's address without the prefix length (falling
// back to primary_ip); Hostname is name; Zone is the site slug and Region
// the slug of the site's region (read from /api/dcim/sites/); Status is
// status.value; Role is the role slug (devices: role in 4.x, device_role in
// 3.x); Tenant is the tenant slug; Tags are the tag slugs; Env and Owner
// are the custom fields named by fields.env and fields.owner (default
// "env" and "owner"), Owner falling back to the tenant slug. Labels hold
// every non-empty custom field (object values by their display name, lists
// comma-joined) plus netbox.kind (device or virtual_machine), netbox.id,
// netbox.cluster, netbox.platform, netbox.site_group, and for devices
// netbox.location, netbox.rack and netbox.device_type.
type NetBox struct {
	base       *url.URL
	get        *getter
	pageSize   int
	maxPages   int
	envField   string
	ownerField string
}

// NewNetBox checks cfg and builds a NetBox fetcher. client may be nil. The
// token is sent as "Authorization: Token <t>", or "Bearer <t>" for NetBox
// 4.5 v2 tokens (nbt_...), unless cfg.AuthScheme says otherwise.
func NewNetBox(cfg config.CMDB, client *http.Client) (*NetBox, error) {
	u, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("cmdb netbox: %w", err)
	}
	base := *u
	base.Path = strings.TrimSuffix(strings.TrimSuffix(base.Path, "/"), "/api")
	base.RawPath = ""
	base.RawQuery = ""
	base.Fragment = ""
	scheme := "Token"
	if strings.HasPrefix(cfg.Token, "nbt_") {
		scheme = "Bearer"
	}
	header, scheme := authOf(cfg, scheme)
	n := &NetBox{
		base:       &base,
		get:        newGetter(client, header, scheme, cfg.Token, orDuration(cfg.Timeout, defaultTimeout), orInt64(cfg.MaxBytes, defaultMaxBytes)),
		pageSize:   cfg.PageSize,
		maxPages:   cfg.MaxPages,
		envField:   cfg.Fields.Env,
		ownerField: cfg.Fields.Owner,
	}
	if n.pageSize <= 0 {
		n.pageSize = defaultPageSize
	}
	if n.maxPages <= 0 {
		n.maxPages = defaultMaxPages
	}
	return n, nil
}

// Fetch reads all sites, then all virtual machines and devices.
func (n *NetBox) Fetch(ctx context.Context) ([]Host, error) {
	sites := map[int64]site{}
	err := n.list(ctx, sitesPath, "", func(results []any) error {
		return decodeSites(results, sites)
	})
	if err != nil {
		return nil, fmt.Errorf("cmdb netbox: %w", err)
	}
	s := &skips{}
	var hosts []Host
	for _, k := range []struct{ path, kind string }{{vmsPath, kindVM}, {devicesPath, kindDevice}} {
		err := n.list(ctx, k.path, "exclude=config_context", func(results []any) error {
			hosts = n.decodeHosts(k.kind, results, sites, hosts, s)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cmdb netbox: %w", err)
		}
	}
	hosts = dedup(hosts, s)
	if hosts == nil {
		hosts = []Host{}
	}
	hosts, err = s.result("cmdb netbox", hosts)
	if err != nil && IsSkipped(err) {
		return hosts, fmt.Errorf("cmdb netbox: %w", err)
	}
	return hosts, err
}

// list follows one paginated list from its first page to next == null,
// calling fn with each page's results.
func (n *NetBox) list(ctx context.Context, path, extra string, fn func([]any) error) error {
	q := url.Values{"limit": {strconv.Itoa(n.pageSize)}}.Encode()
	if extra != "" {
		q += "&" + extra
	}
	seen := map[string]bool{}
	for page := 1; ; page++ {
		if page > n.maxPages {
			return fmt.Errorf("/%s: more than %d pages (max_pages); raise max_pages or page_size", path, n.maxPages)
		}
		seen[q] = true
		u := *n.base
		u.Path = n.base.Path + "/" + path
		u.RawQuery = q
		body, ct, err := n.get.get(ctx, &u)
		if err != nil {
			return err
		}
		results, next, err := decodePage(body)
		if err != nil {
			return fmt.Errorf("/%s page %d: %w", path, page, jsonError(ct, err))
		}
		if err := fn(results); err != nil {
			return fmt.Errorf("/%s page %d: %w", path, page, err)
		}
		if next == "" {
			return nil
		}
		if q, err = nextQuery(next, path); err != nil {
			return fmt.Errorf("/%s page %d: %w", path, page, err)
		}
		if seen[q] {
			return fmt.Errorf("/%s page %d: pagination loop: next page %q was already read", path, page, next)
		}
	}
}

// nextQuery takes the query of a page's next link. Only the query is used:
// the link's scheme and host are often wrong behind a proxy (http for
// https), and the token must not follow a link to another host.
func nextQuery(next, path string) (string, error) {
	u, err := url.Parse(next)
	if err != nil || !strings.HasSuffix(u.Path, "/"+path) {
		return "", fmt.Errorf("field \"next\": %q is not a link to another page of /%s", next, path)
	}
	return u.RawQuery, nil
}

// decodePage checks a NetBox list page and returns its results and next
// link ("" on the last page).
func decodePage(data []byte) (results []any, next string, err error) {
	root, err := parseJSON(data)
	if err != nil {
		return nil, "", err
	}
	page, ok := root.(map[string]any)
	if !ok {
		return nil, "", fmt.Errorf("payload: expected a NetBox list page (an object with results), got %s", kind(root))
	}
	rv, ok := page["results"]
	if !ok {
		return nil, "", fmt.Errorf("field \"results\": missing (not a NetBox list page)")
	}
	if results, ok = rv.([]any); !ok {
		return nil, "", fmt.Errorf("field \"results\": expected a list, got %s", kind(rv))
	}
	switch nv := page["next"].(type) {
	case nil:
	case string:
		next = nv
	default:
		return nil, "", fmt.Errorf("field \"next\": expected a URL or null, got %s", kind(nv))
	}
	return results, next, nil
}

// site is what hosts need from /api/dcim/sites/.
type site struct {
	region string
	group  string
}

// decodeSites adds a page of sites to sites, by id.
func decodeSites(results []any, sites map[int64]site) error {
	for i, rec := range results {
		obj, ok := rec.(map[string]any)
		if !ok {
			return fmt.Errorf("site[%d]: expected an object, got %s", i, kind(rec))
		}
		id, err := idOf(obj)
		if err != nil {
			return fmt.Errorf("site[%d]: %w", i, err)
		}
		region, err := nested(obj, "region")
		if err != nil {
			return fmt.Errorf("site[%d]: %w", i, err)
		}
		group, err := nested(obj, "group")
		if err != nil {
			return fmt.Errorf("site[%d]: %w", i, err)
		}
		sites[id] = site{region: slugOf(region), group: slugOf(group)}
	}
	return nil
}

const (
	kindVM     = "virtual_machine"
	kindDevice = "device"
)

// decodeHosts appends a page of devices or VMs to hosts, recording the
// records it has to skip.
func (n *NetBox) decodeHosts(what string, results []any, sites map[int64]site, hosts []Host, s *skips) []Host {
	for _, rec := range results {
		s.records++
		h, err := n.host(what, rec, sites)
		if err != nil {
			name := h.Hostname
			if name == "" {
				name = h.Labels["netbox.id"]
			}
			s.add("%s %q: %v", what, name, err)
			continue
		}
		hosts = append(hosts, h)
	}
	return hosts
}

// host maps one device or VM. On error the returned Host carries what
// identifies the record (name, netbox.id) for the report.
func (n *NetBox) host(what string, rec any, sites map[int64]site) (Host, error) {
	obj, ok := rec.(map[string]any)
	if !ok {
		return Host{}, fmt.Errorf("expected an object, got %s", kind(rec))
	}
	h := Host{Labels: map[string]string{"netbox.kind": what}}
	if id, err := idOf(obj); err == nil {
		h.Labels["netbox.id"] = strconv.FormatInt(id, 10)
	}
	name, err := scalar(obj["name"])
	if err != nil {
		return h, fmt.Errorf("field \"name\": %v", err)
	}
	h.Hostname = strings.TrimSpace(name)

	if h.IP, err = primaryIP(obj); err != nil {
		return h, err
	}
	if h.Status, err = statusOf(obj["status"]); err != nil {
		return h, err
	}

	nest := map[string]map[string]any{}
	for _, key := range []string{"site", "role", "device_role", "tenant", "cluster", "platform", "location", "rack", "device_type"} {
		if nest[key], err = nested(obj, key); err != nil {
			return h, err
		}
	}
	if st := nest["site"]; st != nil {
		h.Zone = slugOf(st)
		if id, err := idOf(st); err == nil {
			if info, ok := sites[id]; ok {
				h.Region = info.region
				setLabel(h.Labels, "netbox.site_group", info.group)
			}
		}
		if h.Region == "" {
			if r, err := nested(st, "region"); err == nil {
				h.Region = slugOf(r)
			}
		}
	}
	h.Role = slugOf(nest["role"])
	if h.Role == "" {
		h.Role = slugOf(nest["device_role"])
	}
	h.Tenant = slugOf(nest["tenant"])
	setLabel(h.Labels, "netbox.cluster", nameOf(nest["cluster"]))
	setLabel(h.Labels, "netbox.platform", slugOf(nest["platform"]))
	setLabel(h.Labels, "netbox.location", slugOf(nest["location"]))
	setLabel(h.Labels, "netbox.rack", nameOf(nest["rack"]))
	setLabel(h.Labels, "netbox.device_type", slugOf(nest["device_type"]))

	if h.Tags, err = tagsOf(obj["tags"]); err != nil {
		return h, err
	}
	switch cf := obj["custom_fields"].(type) {
	case nil:
	case map[string]any:
		for _, k := range sortedKeys(cf) {
			setLabel(h.Labels, k, cfString(cf[k], 0))
		}
		if n.envField != "" {
			h.Env = cfString(cf[n.envField], 0)
		}
		if n.ownerField != "" {
			h.Owner = cfString(cf[n.ownerField], 0)
		}
	default:
		return h, fmt.Errorf("field \"custom_fields\": expected an object, got %s", kind(cf))
	}
	if h.Owner == "" {
		h.Owner = h.Tenant
	}
	return h, nil
}

// primaryIP reads primary_ip4 (or primary_ip): {"address": "10.0.0.1/24"}.
func primaryIP(obj map[string]any) (netip.Addr, error) {
	for _, key := range []string{"primary_ip4", "primary_ip"} {
		v := obj[key]
		var addr any
		switch x := v.(type) {
		case nil:
			continue
		case string: // lenient: a bare address
			addr = x
		case map[string]any:
			addr = x["address"]
		default:
			return netip.Addr{}, fmt.Errorf("field %q: expected an object or null, got %s", key, kind(v))
		}
		s, ok := addr.(string)
		if !ok {
			return netip.Addr{}, fmt.Errorf("field \"%s.address\": expected an IP address string, got %s", key, kind(addr))
		}
		ip, err := parseIP(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("field \"%s.address\": %v", key, err)
		}
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("no primary IP (primary_ip4 is null)")
}

// statusOf reads {"value": "active", "label": "Active"} (or a bare string).
func statusOf(v any) (string, error) {
	var s string
	switch x := v.(type) {
	case nil:
	case string:
		s = x
	case map[string]any:
		var err error
		if s, err = scalar(x["value"]); err != nil {
			return "", fmt.Errorf("field \"status.value\": %v", err)
		}
	default:
		return "", fmt.Errorf("field \"status\": expected an object, got %s", kind(v))
	}
	return strings.ToLower(strings.TrimSpace(s)), nil
}

// tagsOf reads [{"name": "Web", "slug": "web"}, ...] as slugs.
func tagsOf(v any) ([]string, error) {
	list, ok := v.([]any)
	if v == nil {
		return nil, nil
	}
	if !ok {
		return nil, fmt.Errorf("field \"tags\": expected a list, got %s", kind(v))
	}
	var out []string
	for i, e := range list {
		var t string
		switch x := e.(type) {
		case string:
			t = x
		case map[string]any:
			t = slugOf(x)
		default:
			return nil, fmt.Errorf("field \"tags\": element %d: expected an object, got %s", i, kind(e))
		}
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out, nil
}

// nested returns obj[key] as an object; missing or null is nil.
func nested(obj map[string]any, key string) (map[string]any, error) {
	switch x := obj[key].(type) {
	case nil:
		return nil, nil
	case map[string]any:
		return x, nil
	default:
		return nil, fmt.Errorf("field %q: expected an object or null, got %s", key, kind(x))
	}
}

// idOf reads an object's integer id.
func idOf(obj map[string]any) (int64, error) {
	n, ok := obj["id"].(json.Number)
	if !ok {
		return 0, fmt.Errorf("field \"id\": expected a number, got %s", kind(obj["id"]))
	}
	id, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("field \"id\": %q is not an integer", n.String())
	}
	return id, nil
}

// slugOf names a nested object by slug, falling back to name.
func slugOf(obj map[string]any) string {
	return firstString(obj, "slug", "name", "display")
}

// nameOf names a nested object by name, falling back to display.
func nameOf(obj map[string]any) string {
	return firstString(obj, "name", "display", "slug")
}

func firstString(obj map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, err := scalar(obj[k]); err == nil && strings.TrimSpace(s) != "" {
			return strings.TrimSpace(s)
		}
	}
	return ""
}

// cfString renders a custom field's value: scalars as text, objects
// (object-type fields) by display name, lists comma-joined.
func cfString(v any, depth int) string {
	switch x := v.(type) {
	case map[string]any:
		if s := firstString(x, "display", "name", "slug", "label", "value"); s != "" {
			return s
		}
		return compactJSON(x)
	case []any:
		if depth > 0 {
			return compactJSON(x)
		}
		parts := make([]string, 0, len(x))
		for _, e := range x {
			if s := cfString(e, depth+1); s != "" {
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, ",")
	default:
		s, _ := scalar(x)
		return strings.TrimSpace(s)
	}
}

func setLabel(labels map[string]string, k, v string) {
	if k != "" && v != "" {
		labels[k] = v
	}
}
