package config

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one field.
type FieldError struct {
	// Path is the dotted field path, e.g. "agent.inbound_addr".
	Path string
	// Line is the line in File where the field is set, 0 if the value did
	// not come from the file.
	Line int
	// Source names where a value that did not come from the file came
	// from: "env MESH_AGENT_APP_PORT" or "flag --app-port". Empty for the
	// file and for defaults.
	Source string
	Msg    string
}

func (e FieldError) String() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

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
		switch {
		case f.Source != "":
			fmt.Fprintf(&b, "%s: ", f.Source)
		case e.File != "" && f.Line > 0:
			fmt.Fprintf(&b, "%s:%d: ", e.File, f.Line)
		}
		b.WriteString(f.String())
	}
	return b.String()
}
