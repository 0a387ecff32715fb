package observability

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode"
)

// Plain turns v into what the admin endpoints print: the config's own
// language rather than Go's. Struct fields are named by their json tag,
// else their yaml tag, else their Go name in snake_case (SleepWindow:
// sleep_window); durations are written as in the config ("3s", "250ms");
// values with their own JSON or text form (json.RawMessage, time.Time,
// netip.Addr) keep it; fields tagged secret:"true" are redacted when set.
// Struct fields keep their declaration order.
func Plain(v any) any {
	return plain(reflect.ValueOf(v))
}

var (
	durationType      = reflect.TypeFor[time.Duration]()
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

func plain(v reflect.Value) any {
	if !v.IsValid() {
		return nil
	}
	t := v.Type()
	switch {
	case t == durationType:
		return time.Duration(v.Int()).String()
	case t.Implements(jsonMarshalerType):
		if (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) && v.IsNil() {
			return nil
		}
		return v.Interface()
	case t.Implements(textMarshalerType):
		if v.Kind() == reflect.Pointer && v.IsNil() {
			return nil
		}
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return fmt.Sprintf("<%v>", err)
		}
		return string(b)
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return plain(v.Elem())
	case reflect.Struct:
		return plainStruct(v)
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		out := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			out[fmt.Sprint(it.Key().Interface())] = plain(it.Value())
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return nil
		}
		if t.Elem().Kind() == reflect.Uint8 {
			return v.Interface() // []byte: base64, as encoding/json does
		}
		fallthrough
	case reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = plain(v.Index(i))
		}
		return out
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return nil
	default:
		return v.Interface()
	}
}

// object is a JSON object that keeps its keys in order.
type object []field

type field struct {
	key   string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // "<redacted>", "<nil>" as they are
		_ = enc.Encode(f.key)
		b.Truncate(b.Len() - 1) // Encode's newline
		b.WriteByte(':')
		if err := enc.Encode(f.value); err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		b.Truncate(b.Len() - 1)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func plainStruct(v reflect.Value) any {
	t := v.Type()
	out := make(object, 0, t.NumField())
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		fv := v.Field(i)
		name, omitempty, skip := fieldName(sf)
		if skip {
			continue
		}
		if sf.Anonymous && name == "" {
			// Embedded struct without a tag: its fields are ours.
			if inner, ok := plain(fv).(object); ok {
				out = append(out, inner...)
				continue
			}
		}
		if name == "" {
			name = snake(sf.Name)
		}
		if omitempty && fv.IsZero() {
			continue
		}
		if sf.Tag.Get("secret") == "true" {
			if !fv.IsZero() {
				out = append(out, field{name, "<redacted>"})
			}
			continue
		}
		out = append(out, field{name, plain(fv)})
	}
	return out
}

// fieldName reads the json tag, else the yaml tag: the name ("" when the
// tag has none), whether empty values are left out, whether the field is
// never shown ("-").
func fieldName(sf reflect.StructField) (name string, omitempty, skip bool) {
	for _, key := range []string{"json", "yaml"} {
		tag, ok := sf.Tag.Lookup(key)
		if !ok {
			continue
		}
		if tag == "-" {
			return "", false, true
		}
		name, opts, _ := strings.Cut(tag, ",")
		return name, strings.Contains(","+opts+",", ",omitempty,"), false
	}
	return "", false, false
}

// snake turns a Go name into snake_case: LastNack last_nack, XDSAddr
// xds_addr, ID id.
func snake(s string) string {
	r := []rune(s)
	var b strings.Builder
	for i, c := range r {
		if unicode.IsUpper(c) {
			prevLower := i > 0 && (unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1]))
			nextLower := i > 0 && i+1 < len(r) && unicode.IsUpper(r[i-1]) && unicode.IsLower(r[i+1])
			if prevLower || nextLower {
				b.WriteByte('_')
			}
			b.WriteRune(unicode.ToLower(c))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}
