package config

import (
	"bytes"
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
// (later wins), decodes and validates them. Any problem is an *Error.
func Load(opts Options) (*Config, error) {
	file := opts.File
	if file == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			file = DefaultFile
		}
	}
	v := viper.New()
	def := Default()
	setDefaults(v, "", reflect.ValueOf(def))

	lines := map[string]int{}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, &Error{File: file, Syntax: fmt.Sprintf("read config: %v", errors.Unwrap(err))}
		}
		fieldErrs, err := inspectYAML(data, lines)
		if err != nil {
			return nil, yamlError(file, err)
		}
		if len(fieldErrs) > 0 {
			return nil, &Error{File: file, Fields: fieldErrs}
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, yamlError(file, err)
		}
	}

	v.SetEnvPrefix("MESH")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	_ = v.BindEnv("consul.addr", "MESH_CONSUL_ADDR", "CONSUL_HTTP_ADDR")
	_ = v.BindEnv("consul.token", "MESH_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN")
	_ = v.BindEnv("control.cmdb.token", "MESH_CMDB_TOKEN", "MESH_CONTROL_CMDB_TOKEN")

	if opts.Flags != nil {
		for name, key := range opts.FlagKeys {
			if f := opts.Flags.Lookup(name); f != nil && f.Changed {
				if err := v.BindPFlag(key, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", name, err)
				}
			}
		}
	}

	cfg := Config{}
	if err := v.Unmarshal(&cfg, viper.DecodeHook(decodeHook)); err != nil {
		return nil, &Error{File: file, Fields: decodeErrors(err, lines)}
	}
	if err := mergeServicePolicies(v, &cfg); err != nil {
		return nil, &Error{File: file, Fields: decodeErrors(err, lines)}
	}
	if cfg.Control.CMDB.Token == "" && cfg.Control.CMDB.TokenFile != "" {
		tok, err := os.ReadFile(cfg.Control.CMDB.TokenFile)
		if err != nil {
			return nil, &Error{File: file, Fields: []FieldError{{Path: "control.cmdb.token_file", Line: lines["control.cmdb.token_file"], Msg: err.Error()}}}
		}
		cfg.Control.CMDB.Token = strings.TrimSpace(string(tok))
	}
	if err := cfg.Validate(opts.Role); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = file
			for i := range ce.Fields {
				ce.Fields[i].Line = lineOf(lines, ce.Fields[i].Path)
			}
		}
		return nil, err
	}
	return &cfg, nil
}

var decodeHook = mapstructure.ComposeDecodeHookFunc(
	mapstructure.StringToTimeDurationHookFunc(),
	mapstructure.StringToSliceHookFunc(","),
	upstreamHook,
)

// upstreamHook lets an upstream be written as "service=host:port".
func upstreamHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(Upstream{}) || from.Kind() != reflect.String {
		return data, nil
	}
	u, err := ParseUpstream(data.(string))
	if err != nil {
		return nil, err
	}
	return map[string]any{"service": u.Service, "listen": u.Listen, "protocol": u.Protocol}, nil
}

// mergeServicePolicies decodes each policies.services entry on top of the
// default policy, so a service only states what differs.
func mergeServicePolicies(v *viper.Viper, cfg *Config) error {
	raw, _ := v.Get("policies.services").(map[string]any)
	cfg.Policies.Services = make(map[string]Policy, len(raw))
	for name, body := range raw {
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
		if err != nil {
			return err
		}
		if err := dec.Decode(body); err != nil {
			return fmt.Errorf("'policies.services.%s' %w", name, err)
		}
		cfg.Policies.Services[name] = p
	}
	return nil
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

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

func yamlError(file string, err error) *Error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &Error{File: file, Line: n, Syntax: "invalid YAML: " + m[2]}
	}
	return &Error{File: file, Syntax: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

var decodeErrRE = regexp.MustCompile(`'([A-Za-z0-9_.\[\]-]+)'\s*(.*)`)

func decodeErrors(err error, lines map[string]int) []FieldError {
	var out []FieldError
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "*"))
		if m := decodeErrRE.FindStringSubmatch(l); m != nil {
			out = append(out, FieldError{Path: m[1], Line: lineOf(lines, m[1]), Msg: m[2]})
		}
	}
	if len(out) == 0 {
		out = append(out, FieldError{Path: "(config)", Msg: err.Error()})
	}
	return out
}

// lineOf is the line where path is set in the file, 0 when the value came
// from a default, the environment or a flag.
func lineOf(lines map[string]int, path string) int {
	return lines[path]
}

// inspectYAML parses data, records the line of every key path, and reports
// keys the schema does not know.
func inspectYAML(data []byte, lines map[string]int) ([]FieldError, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	var errs []FieldError
	walkYAML(doc.Content[0], reflect.TypeOf(Config{}), "", lines, &errs)
	return errs, nil
}

func walkYAML(n *yaml.Node, t reflect.Type, path string, lines map[string]int, errs *[]FieldError) {
	switch t.Kind() {
	case reflect.Struct:
		if t.String() == "time.Duration" {
			return
		}
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && t == reflect.TypeOf(Upstream{}) {
				return
			}
			if !(n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
				*errs = append(*errs, FieldError{Path: path, Line: n.Line, Msg: "must be a mapping"})
			}
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := joinPath(path, k.Value)
			lines[p] = k.Line
			f, ok := fieldByTag(t, k.Value)
			if !ok {
				*errs = append(*errs, FieldError{Path: p, Line: k.Line, Msg: "unknown field" + suggest(t, k.Value)})
				continue
			}
			walkYAML(val, f.Type, p, lines, errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := joinPath(path, n.Content[i].Value)
			lines[p] = n.Content[i].Line
			walkYAML(n.Content[i+1], t.Elem(), p, lines, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			lines[p] = item.Line
			walkYAML(item, t.Elem(), p, lines, errs)
		}
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
