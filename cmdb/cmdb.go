// Package cmdb reads machine metadata (region, zone, env, owner, status,
// labels) from a CMDB's REST API so the control plane can attach it to the
// endpoints it learns from Consul, joined by IP.
//
// Two formats are supported: "generic", any JSON list of host objects whose
// fields are mapped by dotted paths, and "netbox", NetBox's own REST API
// (virtual machines and devices, with regions from their sites). A Fetcher
// returns the full current view; a Poller runs a Fetcher on an interval and
// keeps the last good view when the CMDB fails.
package cmdb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/meshvm/mesh/config"
)

// Host is one machine as the CMDB describes it.
type Host struct {
	// IP is the host's primary address (NetBox: primary_ip4 without its
	// prefix length). Hosts join Consul endpoints by IP.
	IP       netip.Addr
	Hostname string
	// Region and Zone locate the host. NetBox: the site's region slug and
	// the site slug.
	Region, Zone string
	// Env and Owner come from mapped fields (generic) or custom fields
	// (NetBox; owner falls back to the tenant slug).
	Env, Owner string
	// Status is lowercased, e.g. active, offline, failed, decommissioning,
	// planned, staged.
	Status string
	Role   string
	Tenant string
	Tags   []string
	// Labels is everything else useful as endpoint metadata, as strings.
	Labels map[string]string
}

// Draining reports whether the host's status is one of statuses (compared
// case-insensitively), i.e. whether its endpoints should be DRAINING.
func (h Host) Draining(statuses []string) bool {
	for _, s := range statuses {
		if strings.EqualFold(strings.TrimSpace(s), h.Status) {
			return true
		}
	}
	return false
}

// Fetcher reads the full current view of the CMDB.
//
// Fetch returns either hosts and a nil error, or nil and an error. The one
// exception is a *SkippedError: some records were unusable (no valid IP,
// malformed, duplicate IP) and were left out, and the hosts returned are
// the complete, usable rest of the view. Use errors.As to tell it apart.
type Fetcher interface {
	Fetch(ctx context.Context) ([]Host, error)
}

// New builds the Fetcher for cfg.Format. client may be nil for a default
// client; per-request timeouts come from cfg.Timeout either way.
func New(cfg config.CMDB, client *http.Client) (Fetcher, error) {
	switch cfg.Format {
	case "generic", "":
		return NewGeneric(cfg, client)
	case "netbox":
		return NewNetBox(cfg, client)
	default:
		return nil, fmt.Errorf("cmdb: unknown format %q (want generic or netbox)", cfg.Format)
	}
}

// maxReasons bounds how many skip reasons a SkippedError keeps.
const maxReasons = 10

// SkippedError reports records left out of an otherwise good view.
type SkippedError struct {
	// Records is how many host records the payload held.
	Records int
	// Count is how many of them were skipped.
	Count int
	// Reasons says why, for the first few skipped records.
	Reasons []string
}

func (e *SkippedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "skipped %d of %d hosts", e.Count, e.Records)
	for i, r := range e.Reasons {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(r)
	}
	if more := e.Count - len(e.Reasons); more > 0 {
		fmt.Fprintf(&b, " (and %d more)", more)
	}
	return b.String()
}

// skips collects the records a decoder leaves out.
type skips struct {
	records int
	count   int
	reasons []string
}

func (s *skips) add(format string, args ...any) {
	s.count++
	if len(s.reasons) < maxReasons {
		s.reasons = append(s.reasons, fmt.Sprintf(format, args...))
	}
}

// result turns a decoded view into Fetch's return values: a *SkippedError
// next to the hosts when some were skipped, and a plain error when records
// existed but none was usable (most likely a wrong field mapping, which must
// not replace a good view with an empty one).
func (s *skips) result(prefix string, hosts []Host) ([]Host, error) {
	if s.count == 0 {
		return hosts, nil
	}
	se := &SkippedError{Records: s.records, Count: s.count, Reasons: s.reasons}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%s: no usable host: %s", prefix, se.Error())
	}
	return hosts, se
}

// dedup drops hosts whose IP an earlier host already has.
func dedup(hosts []Host, s *skips) []Host {
	seen := make(map[netip.Addr]string, len(hosts))
	out := hosts[:0]
	for _, h := range hosts {
		if other, ok := seen[h.IP]; ok {
			s.add("host %q: duplicate ip %s (also %q)", h.Hostname, h.IP, other)
			continue
		}
		seen[h.IP] = h.Hostname
		out = append(out, h)
	}
	return out
}

// IsSkipped reports whether err only says that some records were skipped.
func IsSkipped(err error) bool {
	var se *SkippedError
	return errors.As(err, &se)
}
