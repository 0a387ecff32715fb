package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"
)

// sources collects, while a config is assembled, where each value came
// from and every problem found, so that one report lists them all and
// names the file's line, the environment variable or the flag of each.
type sources struct {
	// lines is the file line of every key path the file sets.
	lines map[string]int
	// sections are the paths of the file's sections (agent:, control:...):
	// a default inside a section was not set on that line.
	sections map[string]bool
	// origin names the environment variable or flag that set a key.
	origin map[string]string
	// bad are the paths whose value was refused and left out.
	bad  map[string]bool
	errs []FieldError

	visits   int  // YAML nodes visited, aliases followed
	tooDeep  bool // the document nests or aliases beyond reason
	leafType map[string]reflect.Type
}

// maxVisits bounds the YAML nodes visited, so that a document of aliases
// of aliases cannot make checking it take forever.
const (
	maxVisits = 200000
	maxDepth  = 64
)

func newSources() *sources {
	s := &sources{
		lines: map[string]int{}, sections: map[string]bool{}, origin: map[string]string{},
		bad: map[string]bool{}, leafType: map[string]reflect.Type{},
	}
	for _, l := range schemaKeys(reflect.TypeOf(Config{}), "") {
		s.leafType[l.path] = l.typ
	}
	return s
}

// refuse records a value that does not fit, which is then left out so it
// causes no further errors.
func (s *sources) refuse(fe FieldError) {
	s.bad[fe.Path] = true
	s.errs = append(s.errs, fe)
}

// add records problems found after decoding; they are placed (line,
// variable, flag) by report.
func (s *sources) add(fes ...FieldError) {
	for _, fe := range fes {
		fe.Path = unescapeKey(fe.Path)
		if s.badPath(fe.Path) {
			continue // already reported where the value came from
		}
		s.place(&fe)
		s.errs = append(s.errs, fe)
	}
}

// badPath reports whether path or a field above it was refused.
func (s *sources) badPath(path string) bool {
	for p := path; p != ""; p = parentPath(p) {
		if s.bad[p] {
			return true
		}
	}
	return false
}

// place sets where the value at fe.Path came from: a flag or an
// environment variable for its key, else the file's line for it.
func (s *sources) place(fe *FieldError) {
	if fe.Source != "" || fe.Line != 0 {
		return
	}
	for p := fe.Path; p != ""; p = parentPath(p) {
		if o, ok := s.origin[p]; ok {
			fe.Source = o
			return
		}
	}
	for p := fe.Path; p != "" && !s.sections[p]; p = parentPath(p) {
		if n, ok := s.lines[p]; ok {
			fe.Line = n
			return
		}
	}
}

// parentPath is the path above p: "a.b[1]" for "a.b[1].c", "a.b" for
// "a.b[1]", "" for "a".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// report is every problem once, in the file's order, then those of the
// environment, of flags, and of defaults. A required field names the ways
// to set it.
func (s *sources) report(flagKeys map[string]string) []FieldError {
	flagOf := map[string]string{}
	for name, key := range flagKeys {
		flagOf[key] = name
	}
	var out []FieldError
	seen := map[FieldError]bool{}
	for _, fe := range s.errs {
		if seen[fe] {
			continue
		}
		seen[fe] = true
		if fe.Msg == "is required" && fe.Source == "" && fe.Line == 0 {
			var ways []string
			if f, ok := flagOf[fe.Path]; ok {
				ways = append(ways, "--"+f)
			}
			if _, ok := s.leafType[fe.Path]; ok {
				ways = append(ways, envNames(fe.Path)[0])
			}
			ways = append(ways, fe.Path+" in the config file")
			fe.Msg += "; set " + strings.Join(ways[:len(ways)-1], ", ")
			if len(ways) > 1 {
				fe.Msg += " or "
			}
			fe.Msg += ways[len(ways)-1]
		}
		out = append(out, fe)
	}
	rank := func(fe FieldError) int {
		switch {
		case fe.Line > 0 && fe.Source == "":
			return 0
		case strings.HasPrefix(fe.Source, "env "):
			return 1
		case fe.Source != "":
			return 2
		}
		return 3
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		return a.Path < b.Path
	})
	return out
}

// envNames are the variables that set key, first wins.
func envNames(key string) []string {
	switch key {
	case "consul.addr":
		return []string{"MESH_CONSUL_ADDR", "CONSUL_HTTP_ADDR"}
	case "consul.token":
		return []string{"MESH_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN"}
	case "control.cmdb.token":
		return []string{"MESH_CMDB_TOKEN", "MESH_CONTROL_CMDB_TOKEN"}
	}
	return []string{"MESH_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))}
}

// readEnv checks and binds the environment variable of every key; an
// empty variable counts as unset.
func (s *sources) readEnv(v *viper.Viper) {
	for _, l := range schemaKeys(reflect.TypeOf(Config{}), "") {
		for _, name := range envNames(l.path) {
			val := os.Getenv(name)
			if val == "" {
				continue
			}
			msg := ""
			if l.typ.Kind() == reflect.Map {
				msg = "cannot be set from the environment; set it in the config file"
			} else {
				msg = checkText(l.typ, val, l.path)
			}
			if msg != "" {
				s.refuse(FieldError{Path: l.path, Source: "env " + name, Msg: msg})
				break
			}
			_ = v.BindEnv(l.path, name)
			s.override(l.path, "env "+name)
			break
		}
	}
}

// readFlags checks and binds the flags given on the command line.
func (s *sources) readFlags(v *viper.Viper, fs *pflag.FlagSet, keys map[string]string) {
	if fs == nil {
		return
	}
	names := make([]string, 0, len(keys))
	for name := range keys {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		key := keys[name]
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		src := "flag --" + name
		if t, ok := s.leafType[key]; ok {
			if msg := checkFlag(f, t, key); msg != "" {
				s.refuse(FieldError{Path: key, Source: src, Msg: msg})
				continue
			}
		}
		if err := v.BindPFlag(key, f); err != nil {
			s.refuse(FieldError{Path: key, Source: src, Msg: "cannot be used: " + err.Error()})
			continue
		}
		s.override(key, src)
	}
}

// override records that src sets key: a value refused below it is no
// longer the one used, so the new one's problems are reported.
func (s *sources) override(key, src string) {
	s.origin[key] = src
	for p := range s.bad {
		if p == key || strings.HasPrefix(p, key+".") || strings.HasPrefix(p, key+"[") {
			delete(s.bad, p)
		}
	}
}

// checkFlag checks a parsed flag's value against the type of its key.
func checkFlag(f *pflag.Flag, t reflect.Type, key string) string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		if t.Kind() != reflect.Slice {
			return "takes one value"
		}
		for i, item := range sv.GetSlice() {
			if msg := checkText(t.Elem(), item, fmt.Sprintf("%s[%d]", key, i)); msg != "" {
				if len(sv.GetSlice()) > 1 {
					return fmt.Sprintf("value %d: %s", i+1, msg)
				}
				return msg
			}
		}
		return ""
	}
	return checkText(t, f.Value.String(), key)
}

// flagTypes maps pflag's type names onto the Go types they hold.
var flagTypes = map[string]reflect.Type{
	"duration": durType,
	"int":      reflect.TypeOf(0), "int8": reflect.TypeOf(int8(0)), "int16": reflect.TypeOf(int16(0)),
	"int32": reflect.TypeOf(int32(0)), "int64": reflect.TypeOf(int64(0)),
	"uint": reflect.TypeOf(uint(0)), "uint8": reflect.TypeOf(uint8(0)), "uint16": reflect.TypeOf(uint16(0)),
	"uint32": reflect.TypeOf(uint32(0)), "uint64": reflect.TypeOf(uint64(0)),
	"float32": reflect.TypeOf(float32(0)), "float64": reflect.TypeOf(float64(0)),
	"bool": reflect.TypeOf(false),
}

// FlagError rewords a flag whose value could not be parsed (for instance
// `--drain-period 2`) as an *Error naming the flag, the value and an
// example of a valid one. It reports false for any other error.
func FlagError(err error) (*Error, bool) {
	var ive *pflag.InvalidValueError
	if !errors.As(err, &ive) || ive.GetFlag() == nil {
		return nil, false
	}
	f, val := ive.GetFlag(), ive.GetValue()
	msg := ""
	if t, ok := flagTypes[f.Value.Type()]; ok {
		msg = checkText(t, val, f.Name)
	}
	if msg == "" {
		msg = fmt.Sprintf("%q is not %s", val, f.Value.Type())
	}
	return &Error{Fields: []FieldError{{Source: "flag --" + f.Name, Msg: msg}}}, true
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

// readYAML parses the file, records the line of every key, checks every
// value against its field's type and returns the document without the
// values it refused, for viper. Only a document that is not YAML at all
// is an error here; the rest are recorded.
func (s *sources) readYAML(data []byte) (map[string]any, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return map[string]any{}, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return map[string]any{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file must be a mapping of sections (log:, consul:, agent:, control:, policies:, observability:)", root.Line)
	}
	s.walk(root, reflect.TypeOf(Config{}), "", false, 0)
	if s.tooDeep {
		return nil, errors.New("the document nests or repeats aliases too deeply to check")
	}
	m := map[string]any{}
	if err := root.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// walk checks node n against t, the type of the field at path, and reports
// whether n must be left out. inLeaf says that path is at or below a key
// (not a section).
func (s *sources) walk(n *yaml.Node, t reflect.Type, path string, inLeaf bool, depth int) (drop bool) {
	s.visits++
	if s.visits > maxVisits || depth > maxDepth {
		s.tooDeep = true
		return true
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return true
		}
		return s.walk(n.Alias, t, path, inLeaf, depth+1)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return false
	}
	kind := func() string {
		switch n.Kind {
		case yaml.MappingNode:
			return "a mapping"
		case yaml.SequenceNode:
			return "a list"
		}
		return strconv.Quote(n.Value)
	}
	refuse := func(msg string) bool {
		s.refuse(FieldError{Path: path, Line: n.Line, Msg: msg})
		return true
	}
	_, hasForm := stringForms[t]
	switch {
	case t.Kind() == reflect.Struct && t != durType && !(hasForm && n.Kind == yaml.ScalarNode):
		if n.Kind != yaml.MappingNode {
			return refuse(fmt.Sprintf("%s is not a mapping; this is a section of fields (field: value lines below it)", kind()))
		}
		if !inLeaf {
			s.sections[path] = true
		}
		s.walkMapping(n, t, path, inLeaf, depth)
		return false
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return refuse(fmt.Sprintf("%s is not a mapping; write key: value lines below it", kind()))
		}
		s.walkMap(n, t, path, depth)
		return false
	case t.Kind() == reflect.Slice:
		switch n.Kind {
		case yaml.ScalarNode:
			if msg := checkText(t, n.Value, path); msg != "" {
				return refuse(msg)
			}
			return false
		case yaml.SequenceNode:
			for i, item := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if item.Line > 0 {
					s.lines[p] = item.Line
				}
				if s.walk(item, t.Elem(), p, true, depth+1) {
					drop = true
				}
			}
			if drop {
				s.bad[path] = true // left out as a whole: indexes must not shift
			}
			return drop
		}
		return refuse(fmt.Sprintf("%s is not a list; write e.g. [a, b] or one \"- item\" line each", kind()))
	}
	if n.Kind != yaml.ScalarNode {
		return refuse(withExample(fmt.Sprintf("%s is not %s", kind(), describeType(t)), exampleFor(path, t)))
	}
	if msg := checkText(t, n.Value, path); msg != "" {
		return refuse(msg)
	}
	return false
}

// walkMapping checks the fields of a section or struct, leaving out unknown
// fields and refused values.
func (s *sources) walkMapping(n *yaml.Node, t reflect.Type, path string, inLeaf bool, depth int) {
	s.visits++
	if s.visits > maxVisits || depth > maxDepth {
		s.tooDeep = true
		return
	}
	keep := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && (k.Tag == "!!merge" || k.Value == "<<") {
			// "<<: *base" merges another mapping's fields here.
			targets := []*yaml.Node{val}
			if val.Kind == yaml.SequenceNode {
				targets = val.Content
			}
			ok := true
			for _, m := range targets {
				for m.Kind == yaml.AliasNode && m.Alias != nil && depth < maxDepth {
					m, depth = m.Alias, depth+1
				}
				if m.Kind != yaml.MappingNode {
					s.errs = append(s.errs, FieldError{Path: orTop(path), Line: k.Line, Msg: "<< must merge a mapping (an alias such as *base)"})
					ok = false
					continue
				}
				s.walkMapping(m, t, path, inLeaf, depth+1)
			}
			if ok {
				keep = append(keep, k, val)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			s.errs = append(s.errs, FieldError{Path: orTop(path), Line: k.Line, Msg: "a field name must be a plain word"})
			continue
		}
		p := joinPath(path, k.Value)
		f, ok := fieldByTag(t, k.Value)
		if !ok {
			s.errs = append(s.errs, FieldError{Path: p, Line: k.Line, Msg: "unknown field" + suggest(t, k.Value)})
			continue
		}
		s.lines[p] = k.Line
		if val.Kind == yaml.ScalarNode && val.Tag == "!!null" {
			// "field:" with nothing after it leaves the default; given to
			// viper, a null section would hide the environment's values.
			continue
		}
		_, isLeaf := s.leafType[p]
		if s.walk(val, f.Type, p, inLeaf || isLeaf, depth+1) {
			continue
		}
		keep = append(keep, k, val)
	}
	n.Content = keep
}

// orTop names the top level of the file in a problem's path.
func orTop(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

// dottedKeys are the maps whose keys are mesh service names, which may
// carry a namespace (orders.shop, a Kubernetes service).
var dottedKeys = map[string]bool{"policies.services": true, "control.services": true}

// keyDot stands for '.' inside a map key while viper holds the config:
// viper reads every '.' of a key as a level. It is lowercase (viper
// lowercases keys) and cannot occur in a service name.
const keyDot = "%2e"

func escapeKey(k string) string   { return strings.ReplaceAll(k, ".", keyDot) }
func unescapeKey(k string) string { return strings.ReplaceAll(k, keyDot, ".") }

// walkMap checks a map's keys and values (agent.meta, policies.services).
func (s *sources) walkMap(n *yaml.Node, t reflect.Type, path string, depth int) {
	keep := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			s.errs = append(s.errs, FieldError{Path: path, Line: k.Line, Msg: "a key must be a plain word"})
			continue
		}
		p := joinPath(path, k.Value)
		switch {
		case k.Value == "" || k.Tag == "!!null":
			s.errs = append(s.errs, FieldError{Path: path, Line: k.Line, Msg: "a key must not be empty"})
			continue
		case strings.Contains(k.Value, ".") && !dottedKeys[path]:
			s.errs = append(s.errs, FieldError{Path: path, Line: k.Line, Msg: fmt.Sprintf("key %q must not contain '.'", k.Value)})
			continue
		case strings.Contains(k.Value, "."):
			// A mesh service name such as orders.shop: hidden from viper,
			// which would split it into two levels (see escapeKey).
			k.Value = escapeKey(k.Value)
		}
		s.lines[p] = k.Line
		if s.walk(val, t.Elem(), p, true, depth+1) {
			continue
		}
		keep = append(keep, k, val)
	}
	n.Content = keep
}
