package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"
)

// DefaultFile is read when no --config is given and it exists.
const DefaultFile = "/etc/mesh/mesh.yaml"

// Options says where a config comes from.
type Options struct {
	// File is the YAML file. Empty means DefaultFile if it exists.
	File string
	// Flags are the command's parsed flags; FlagKeys maps a flag name to
	// the config key it sets. Only flags given on the command line count.
	Flags    *pflag.FlagSet
	FlagKeys map[string]string
	// Role selects the required fields.
	Role Role
}

// Load assembles defaults, the file, MESH_* environment variables and flags
// (later wins), decodes and validates them. Any problem is an *Error that
// lists every problem found (a file that is not YAML stops at that), each
// naming where its value came from: the file's line, the environment
// variable or the flag.
func Load(opts Options) (*Config, error) {
	file := opts.File
	if file == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			file = DefaultFile
		}
	}
	v := viper.New()
	setDefaults(v, "", reflect.ValueOf(Default()))
	src := newSources()

	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, &Error{File: file, Syntax: fmt.Sprintf("read config: %v", errors.Unwrap(err))}
		}
		m, err := src.readYAML(data)
		if err != nil {
			return nil, yamlError(file, err)
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, yamlError(file, err)
		}
	}
	src.readEnv(v)
	src.readFlags(v, opts.Flags, opts.FlagKeys)

	cfg := Config{}
	if err := v.Unmarshal(&cfg, viper.DecodeHook(decodeHook)); err != nil {
		src.add(decodeFieldErrors(err, "")...)
	}
	unescapeServiceKeys(&cfg)
	src.add(mergeServicePolicies(v, &cfg)...)
	src.add(mergeSubsetPolicies(v, &cfg)...)
	if cfg.Control.CMDB.Token == "" && cfg.Control.CMDB.TokenFile != "" {
		tok, err := os.ReadFile(cfg.Control.CMDB.TokenFile)
		if err != nil {
			msg := err.Error()
			var pe *os.PathError
			if errors.As(err, &pe) {
				msg = pe.Err.Error()
			}
			src.add(FieldError{Path: "control.cmdb.token_file", Msg: fmt.Sprintf("cannot read %q: %s", cfg.Control.CMDB.TokenFile, msg)})
		} else {
			cfg.Control.CMDB.Token = strings.TrimSpace(string(tok))
		}
	}
	if opts.Role == RoleControl {
		src.add(cfg.Control.Gateway.checkFiles()...)
	}
	if err := cfg.Validate(opts.Role); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			src.add(ce.Fields...)
		}
	}
	if errs := src.report(opts.FlagKeys); len(errs) > 0 {
		return nil, &Error{File: file, Fields: errs}
	}
	return &cfg, nil
}

// decodeHook turns the strings of the file, the environment and flags into
// the schema's types. Every value was checked before (values.go); these
// hooks refuse what slipped through rather than guess.
var decodeHook = mapstructure.ComposeDecodeHookFunc(
	durationHook,
	splitHook,
	upstreamHook,
)

// splitHook reads one string as a comma-separated list, for a list of any
// type (MESH_AGENT_UPSTREAMS=pay=127.0.0.1:9191,inv=127.0.0.1:9192).
func splitHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return data, nil
	}
	s := reflect.ValueOf(data).String()
	if s == "" {
		return []string{}, nil
	}
	return splitList(to.Elem(), s), nil
}

// durationHook reads a duration from its text ("2s") or a plain 0; a
// number other than 0 has no unit and is refused.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		return parseDuration(data.(string))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if from == durType {
			return data, nil
		}
		return parseDuration(fmt.Sprint(data))
	}
	return data, nil
}

// upstreamHook lets an upstream be written as "service=host:port".
func upstreamHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(Upstream{}) || from.Kind() != reflect.String {
		return data, nil
	}
	u, err := ParseUpstream(data.(string))
	if err != nil {
		return nil, &valueError{err.Error()}
	}
	return map[string]any{"service": u.Service, "listen": u.Listen, "protocol": u.Protocol}, nil
}

// decodeFieldErrors rewords what mapstructure refused, field by field;
// prefix is the path of the value decoded.
func decodeFieldErrors(err error, prefix string) []FieldError {
	var out []FieldError
	var walk func(e error, name string)
	walk = func(e error, name string) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c, name)
			}
			return
		}
		var de *mapstructure.DecodeError
		if errors.As(e, &de) {
			walk(de.Unwrap(), de.Name())
			return
		}
		out = append(out, FieldError{Path: decodePath(prefix, name), Msg: describeDecodeError(e)})
	}
	walk(err, "")
	return out
}

var mapIndexRE = regexp.MustCompile(`\[([^\]]*[^0-9\]][^\]]*)\]`)

// decodePath turns mapstructure's "agent.meta[team]" into "agent.meta.team".
func decodePath(prefix, name string) string {
	name = mapIndexRE.ReplaceAllString(name, ".$1")
	if prefix == "" {
		return name
	}
	if name == "" {
		return prefix
	}
	return prefix + "." + name
}

func describeDecodeError(e error) string {
	var ve *valueError
	var pe *mapstructure.ParseError
	var ue *mapstructure.UnconvertibleTypeError
	switch {
	case errors.As(e, &ve):
		return ve.msg
	case errors.As(e, &pe):
		return fmt.Sprintf("%s is not %s", quoteValue(pe.Value), describeType(pe.Expected.Type()))
	case errors.As(e, &ue):
		return fmt.Sprintf("%s is not %s", quoteValue(ue.Value), describeType(ue.Expected.Type()))
	}
	return "cannot be read: " + e.Error()
}

func quoteValue(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%q", fmt.Sprint(v))
}

// mergeServicePolicies decodes each policies.services entry on top of the
// default policy, so a service only states what differs.
func mergeServicePolicies(v *viper.Viper, cfg *Config) []FieldError {
	raw, _ := v.Get("policies.services").(map[string]any)
	cfg.Policies.Services = make(map[string]Policy, len(raw))
	var errs []FieldError
	for key, body := range raw {
		name := unescapeKey(key)
		p := cfg.Policies.Default
		p.Retries.RetryOn = append([]string(nil), p.Retries.RetryOn...)
		if m, ok := body.(map[string]any); ok {
			if r, ok := m["retries"].(map[string]any); ok && r["retry_on"] != nil {
				p.Retries.RetryOn = nil
			}
		}
		dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
			DecodeHook: decodeHook, Result: &p, WeaklyTypedInput: true,
		})
		if err == nil {
			err = dec.Decode(body)
		}
		if err != nil {
			errs = append(errs, decodeFieldErrors(err, "policies.services."+name)...)
		}
		cfg.Policies.Services[name] = p
	}
	return errs
}

// mergeSubsetPolicies decodes each control.services.<name>.subsets[i].policy
// on top of the service's effective policy, so a subset only states what
// differs; a subset without one keeps the zero Policy (the service's).
// unescapeServiceKeys restores the dotted service names (orders.shop)
// viper held escaped in control.services (see escapeKey).
func unescapeServiceKeys(cfg *Config) {
	for key, s := range cfg.Control.Services {
		if name := unescapeKey(key); name != key {
			delete(cfg.Control.Services, key)
			cfg.Control.Services[name] = s
		}
	}
}

func mergeSubsetPolicies(v *viper.Viper, cfg *Config) []FieldError {
	raw, _ := v.Get("control.services").(map[string]any)
	var errs []FieldError
	for key, body := range raw {
		name := unescapeKey(key)
		m, _ := body.(map[string]any)
		subs, _ := m["subsets"].([]any)
		settings, ok := cfg.Control.Services[name]
		if !ok {
			continue
		}
		for i, sb := range subs {
			sm, _ := sb.(map[string]any)
			pol, ok := sm["policy"]
			if !ok || pol == nil || i >= len(settings.Subsets) {
				continue
			}
			p := cfg.Policies.For(name)
			p.Retries.RetryOn = append([]string(nil), p.Retries.RetryOn...)
			if pm, ok := pol.(map[string]any); ok {
				if r, ok := pm["retries"].(map[string]any); ok && r["retry_on"] != nil {
					p.Retries.RetryOn = nil
				}
				if lb, ok := pm["load_balancer"].(map[string]any); ok && lb["hash"] != nil {
					p.LoadBalancer.Hash = HashKey{}
				}
			}
			dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
				DecodeHook: decodeHook, Result: &p, WeaklyTypedInput: true,
			})
			if err == nil {
				err = dec.Decode(pol)
			}
			if err != nil {
				errs = append(errs, decodeFieldErrors(err, fmt.Sprintf("control.services.%s.subsets[%d].policy", name, i))...)
			}
			settings.Subsets[i].Policy = p
		}
	}
	return errs
}

// setDefaults registers every leaf key, so environment variables reach
// keys the file does not mention.
func setDefaults(v *viper.Viper, prefix string, rv reflect.Value) {
	t := rv.Type()
	for i := 0; i < t.NumField(); i++ {
		key := t.Field(i).Tag.Get("mapstructure")
		if prefix != "" {
			key = prefix + "." + key
		}
		f := rv.Field(i)
		if f.Kind() == reflect.Struct && f.Type().String() != "time.Duration" {
			setDefaults(v, key, f)
			continue
		}
		v.SetDefault(key, f.Interface())
	}
}

func joinPath(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Tag.Get("mapstructure") == name {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

// suggest names a known field close to a misspelt one.
func suggest(t reflect.Type, name string) string {
	best, bestD := "", 3
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("mapstructure")
		if d := editDistance(tag, name); d < bestD {
			best, bestD = tag, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// YAML renders the effective config with secrets redacted.
func (c *Config) YAML() ([]byte, error) {
	red := *c
	if red.Consul.Token != "" {
		red.Consul.Token = "<redacted>"
	}
	if red.Control.CMDB.Token != "" {
		red.Control.CMDB.Token = "<redacted>"
	}
	return yaml.Marshal(&red)
}
