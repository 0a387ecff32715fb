package config

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one field.
type FieldError struct {
	// Path is the dotted field path, e.g. "agent.inbound_addr".
	Path string
	// Line is the line in File where the field is set, 0 if unknown
	// (the value came from a default, the environment or a flag).
	Line int
	Msg  string
}

func (e FieldError) String() string { return e.Path + ": " + e.Msg }

// Error is an invalid configuration. It means exit code 2.
type Error struct {
	// File is the config file, empty if none was read.
	File string
	// Line is set for a file that is not valid YAML.
	Line   int
	Syntax string
	Fields []FieldError
}

func (e *Error) Error() string {
	var b strings.Builder
	src := e.File
	if src == "" {
		src = "flags and environment"
	}
	if e.Syntax != "" {
		if e.Line > 0 {
			fmt.Fprintf(&b, "%s:%d: %s", src, e.Line, e.Syntax)
		} else {
			fmt.Fprintf(&b, "%s: %s", src, e.Syntax)
		}
		return b.String()
	}
	fmt.Fprintf(&b, "invalid config (%s):", src)
	for _, f := range e.Fields {
		b.WriteString("\n  ")
		if e.File != "" && f.Line > 0 {
			fmt.Fprintf(&b, "%s:%d: ", e.File, f.Line)
		}
		b.WriteString(f.String())
	}
	return b.String()
}
