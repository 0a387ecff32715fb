package config

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file checks one value, as written in the file, an environment
// variable or a flag, against the Go type of its field before anything is
// decoded, so that every mistake is reported in words, with the value and
// an example of a valid one. The checks are driven by the field's type:
// a new field of a known type gets them without being listed anywhere.

var durType = reflect.TypeOf(time.Duration(0))

// stringForms are struct types that may also be written as one string,
// with the parser that accepts that string.
var stringForms = map[reflect.Type]struct {
	parse   func(string) error
	example string
	// startsItem says whether a comma-separated piece starts a new item
	// of a list; nil means every piece does.
	startsItem func(string) bool
}{
	reflect.TypeOf(Upstream{}): {
		parse:   func(s string) error { _, err := ParseUpstream(s); return err },
		example: "payments=127.0.0.1:9191",
		// "pay=127.0.0.1:9191,tcp": a piece without "=" is an option of
		// the upstream before it.
		startsItem: func(piece string) bool { return strings.Contains(piece, "=") },
	},
}

// splitList splits one string into the items of a list of elem: at every
// comma, except where the elem's string form says a piece continues the
// item before it.
func splitList(elem reflect.Type, s string) []string {
	pieces := strings.Split(s, ",")
	form, ok := stringForms[elem]
	if !ok || form.startsItem == nil {
		return pieces
	}
	var items []string
	for _, p := range pieces {
		if len(items) > 0 && !form.startsItem(p) {
			items[len(items)-1] += "," + p
			continue
		}
		items = append(items, p)
	}
	return items
}

// durationExample is the example given when a field has no better one.
const durationExample = "2s or 500ms"

// checkText checks the text of one scalar value against t, the type of the
// field at path. It returns "" when the value is fine, else the problem.
func checkText(t reflect.Type, s, path string) string {
	if t == durType {
		if _, err := parseDurationFor(s, path); err != nil {
			return err.Error()
		}
		return ""
	}
	if form, ok := stringForms[t]; ok {
		if err := form.parse(s); err != nil {
			return withExample(err.Error(), form.example)
		}
		return ""
	}
	switch t.Kind() {
	case reflect.String:
		return ""
	case reflect.Bool:
		if _, err := strconv.ParseBool(s); err != nil {
			return fmt.Sprintf("%q is not true or false", s)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if _, err := strconv.ParseInt(s, 0, t.Bits()); err != nil {
			return numberProblem(s, err, "a whole number", exampleFor(path, t))
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if _, err := strconv.ParseUint(s, 0, t.Bits()); err != nil {
			return numberProblem(s, err, "a whole number, 0 or more", exampleFor(path, t))
		}
	case reflect.Float32, reflect.Float64:
		if _, err := strconv.ParseFloat(s, t.Bits()); err != nil {
			return numberProblem(s, err, "a number", exampleFor(path, t))
		}
	case reflect.Slice:
		// One string is a comma-separated list.
		if s == "" {
			return ""
		}
		for i, item := range splitList(t.Elem(), s) {
			if msg := checkText(t.Elem(), item, fmt.Sprintf("%s[%d]", path, i)); msg != "" {
				return fmt.Sprintf("item %d: %s", i+1, msg)
			}
		}
	case reflect.Map, reflect.Struct:
		return fmt.Sprintf("%q is a single value; this field is a mapping (key: value lines below it)", s)
	default:
		return fmt.Sprintf("%q cannot be used here", s)
	}
	return ""
}

func numberProblem(s string, err error, what, example string) string {
	if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
		return withExample(fmt.Sprintf("%q is out of range", s), example)
	}
	return withExample(fmt.Sprintf("%q is not %s", s, what), example)
}

func withExample(msg, example string) string {
	if example == "" || strings.Contains(msg, "e.g.") {
		return msg
	}
	return msg + "; write e.g. " + example
}

var (
	plainNumberRE    = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
	digitsRE         = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)
	durationSyntaxRE = regexp.MustCompile(`^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)
)

// valueError is a value that does not fit its field, in words.
type valueError struct{ msg string }

func (e *valueError) Error() string { return e.msg }

// parseDuration parses a duration as written in the config: Go's syntax
// (2s, 1m30s, 500ms) or a plain 0. A bare number other than 0 is refused:
// it used to mean nanoseconds, which no one writing "2" means.
func parseDuration(s string) (time.Duration, error) { return parseDurationFor(s, "") }

// parseDurationFor is parseDuration for the field at path, whose floor
// bounds the examples given.
func parseDurationFor(s, path string) (time.Duration, error) {
	if plainNumberRE.MatchString(s) {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f == 0 {
			return 0, nil
		}
		ex := exampleFor(path, durType)
		if digitsRE.MatchString(s) {
			// The number with units that fit the field: 2s or 500ms.
			floor := floorAt(path)
			var fits []string
			for _, c := range []string{s + "s", "500ms"} {
				if strings.HasPrefix(s, "0") && c != "500ms" {
					continue
				}
				if d, err := time.ParseDuration(c); err == nil && d >= floor {
					fits = append(fits, c)
				}
			}
			if len(fits) > 0 {
				ex = strings.Join(fits, " or ")
			}
		}
		return 0, &valueError{fmt.Sprintf("%q has no unit; write e.g. %s", s, ex)}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if durationSyntaxRE.MatchString(s) {
			return 0, &valueError{fmt.Sprintf("%q is out of range (at most about 290 years)", s)}
		}
		return 0, &valueError{fmt.Sprintf("%q is not a duration; write e.g. %s (units: ns, us, ms, s, m, h)",
			s, exampleFor(path, durType))}
	}
	return d, nil
}

// floorAt is the shortest duration other than 0 the field at path
// accepts: its `min` tag, else defaultFloor.
func floorAt(path string) time.Duration {
	if f, ok := fieldAt(path); ok {
		if m, err := time.ParseDuration(f.Tag.Get("min")); err == nil {
			return m
		}
	}
	return defaultFloor
}

// fieldAt is the struct field at a path such as
// "policies.services.orders.rate_limit.fill_interval".
func fieldAt(path string) (reflect.StructField, bool) {
	t := reflect.TypeOf(Config{})
	var f reflect.StructField
	found := false
	for _, seg := range strings.Split(path, ".") {
		name, _, _ := strings.Cut(seg, "[")
		switch {
		case t.Kind() == reflect.Map:
			t, found = t.Elem(), false
		case t.Kind() == reflect.Struct && t != durType:
			var ok bool
			if f, ok = fieldByTag(t, name); !ok {
				return f, false
			}
			t, found = f.Type, true
		default:
			return f, false
		}
		for strings.Contains(seg, "[") && t.Kind() == reflect.Slice {
			t, found = t.Elem(), false
			seg = seg[strings.Index(seg, "[")+1:]
		}
	}
	return f, found
}

// exampleFor is a valid value for the field of type t at path: its default
// when that says something, else one that fits the type.
func exampleFor(path string, t reflect.Type) string {
	if form, ok := stringForms[t]; ok {
		return form.example
	}
	def, ok := defaultAt(path)
	if ok && !def.IsZero() && def.Type() == t {
		switch {
		case t == durType:
			return shortDuration(def.Interface().(time.Duration))
		case t.Kind() == reflect.String, t.Kind() == reflect.Bool,
			t.Kind() >= reflect.Int && t.Kind() <= reflect.Float64:
			return fmt.Sprint(def.Interface())
		}
	}
	last := path
	if i := strings.LastIndexAny(path, ".-"); i >= 0 {
		last = path[i+1:]
	}
	switch {
	case t == durType:
		return durationExample
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		if strings.HasSuffix(last, "port") {
			return "8080"
		}
		return "100"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "0.5"
	case t.Kind() == reflect.Slice:
		return "[a, b]"
	}
	return ""
}

// defaultAliases are paths whose default is another path's value.
var defaultAliases = map[string]string{"policies.services.": "policies.default."}

// defaultAt is the default value at a field path such as
// "agent.upstreams[0].listen"; false when there is none.
func defaultAt(path string) (reflect.Value, bool) {
	for from, to := range defaultAliases {
		if rest, ok := strings.CutPrefix(path, from); ok {
			if _, after, ok := strings.Cut(rest, "."); ok {
				path = to + after
			}
		}
	}
	v := reflect.ValueOf(Default())
	for _, seg := range strings.Split(path, ".") {
		name, _, _ := strings.Cut(seg, "[")
		if name == "" {
			return reflect.Value{}, false
		}
		switch v.Kind() {
		case reflect.Struct:
			if v.Type() == durType {
				return reflect.Value{}, false
			}
			f, ok := fieldByTag(v.Type(), name)
			if !ok {
				return reflect.Value{}, false
			}
			v = v.FieldByIndex(f.Index)
		case reflect.Map:
			e := v.MapIndex(reflect.ValueOf(name))
			if !e.IsValid() {
				e = reflect.Zero(v.Type().Elem())
			}
			v = e
		default:
			return reflect.Value{}, false
		}
		if strings.Contains(seg, "[") {
			if v.Kind() != reflect.Slice {
				return reflect.Value{}, false
			}
			v = reflect.Zero(v.Type().Elem())
		}
	}
	return v, v.IsValid()
}

// schemaKey is a key that the environment and flags set as one value.
type schemaKey struct {
	path string
	typ  reflect.Type
}

// schemaKeys lists the keys of t: every field that is not a section (a struct
// other than a duration), in declaration order.
func schemaKeys(t reflect.Type, prefix string) []schemaKey {
	var out []schemaKey
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := joinPath(prefix, f.Tag.Get("mapstructure"))
		if f.Type.Kind() == reflect.Struct && f.Type != durType {
			out = append(out, schemaKeys(f.Type, key)...)
			continue
		}
		out = append(out, schemaKey{key, f.Type})
	}
	return out
}

// describeType names what a field of type t holds, for messages.
func describeType(t reflect.Type) string {
	switch {
	case t == durType:
		return "a duration such as 2s or 500ms"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Slice:
		return "a list"
	}
	return "a mapping"
}

// shortDuration writes d as a person would: 24h, 1m, 1m30s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
