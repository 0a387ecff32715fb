package cmdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
)

// parseJSON decodes one JSON document into plain Go values (objects as
// map[string]any, numbers as json.Number) and rejects trailing data.
func parseJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("invalid JSON: empty body")
		}
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("invalid JSON: data after the top-level value")
	}
	return v, nil
}

// kind names a JSON value's type for error messages.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "list"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "bool"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// lookup follows a dotted path through nested objects; a numeric segment
// also indexes a list ("addresses.0.ip"). ok is false when some step is
// missing; err is set when a step is not an object (or list) to descend
// into, naming the path so far.
func lookup(root any, path string) (v any, ok bool, err error) {
	v = root
	var walked string
	for seg := range strings.SplitSeq(path, ".") {
		switch cur := v.(type) {
		case map[string]any:
			v, ok = cur[seg]
			if !ok {
				return nil, false, nil
			}
		case []any:
			i, convErr := atoiSmall(seg)
			if convErr != nil {
				return nil, false, fmt.Errorf("field %q: expected an object, got list", walked)
			}
			if i >= len(cur) {
				return nil, false, nil
			}
			v = cur[i]
		case nil:
			return nil, false, nil
		default:
			return nil, false, fmt.Errorf("field %q: expected an object, got %s", walked, kind(cur))
		}
		if walked == "" {
			walked = seg
		} else {
			walked += "." + seg
		}
	}
	return v, true, nil
}

// atoiSmall parses a non-negative list index of at most 9 digits.
func atoiSmall(s string) (int, error) {
	if s == "" || len(s) > 9 {
		return 0, errors.New("not an index")
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errors.New("not an index")
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// scalar turns a string, number or bool into a string; null is "". Objects
// and lists are an error.
func scalar(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		if x {
			return "true", nil
		}
		return "false", nil
	default:
		return "", fmt.Errorf("expected a string, got %s", kind(v))
	}
}

// parseIP accepts "10.0.0.1" or "10.0.0.1/24" (NetBox's form) and returns
// the address, with IPv4-mapped IPv6 unmapped.
func parseIP(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Addr{}, errors.New("empty address")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
		}
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// maxFlattenDepth bounds how deep nested label objects are flattened into
// dotted keys; deeper values become compact JSON.
const maxFlattenDepth = 4

// flatten writes v into labels under key: scalars as strings, objects as
// dotted keys ("a.b"), lists of scalars comma-joined, anything else as
// compact JSON. Nulls are left out.
func flatten(labels map[string]string, key string, v any, depth int) {
	switch x := v.(type) {
	case nil:
	case map[string]any:
		if depth >= maxFlattenDepth {
			labels[key] = compactJSON(x)
			return
		}
		for k, sub := range x {
			if key != "" {
				k = key + "." + k
			}
			flatten(labels, k, sub, depth+1)
		}
	case []any:
		if s, ok := joinScalars(x); ok {
			labels[key] = s
			return
		}
		labels[key] = compactJSON(x)
	default:
		s, _ := scalar(x)
		labels[key] = s
	}
}

// joinScalars comma-joins a list of scalars.
func joinScalars(list []any) (string, bool) {
	parts := make([]string, 0, len(list))
	for _, e := range list {
		s, err := scalar(e)
		if err != nil || e == nil {
			return "", false
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ","), true
}

func compactJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// sortedKeys returns m's keys in order, for deterministic output.
func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
