package observability

import (
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
)

// Condition is one thing a role's readiness is made of, or reports next
// to it: its name, whether it holds, and a line saying why.
type Condition struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Required conditions make the role unready when they fail; the
	// others are reported only.
	Required bool   `json:"required"`
	Detail   string `json:"detail,omitempty"`
}

// Readiness is the answer of /ready: ready when every required condition
// holds.
type Readiness struct {
	Ready      bool        `json:"ready"`
	Conditions []Condition `json:"conditions"`
}

// NewReadiness computes Ready from the conditions.
func NewReadiness(conds ...Condition) Readiness {
	r := Readiness{Ready: true, Conditions: conds}
	for _, c := range conds {
		if c.Required && !c.OK {
			r.Ready = false
		}
	}
	return r
}

// Failing returns the names of the required conditions that fail.
func (r Readiness) Failing() []string {
	var out []string
	for _, c := range r.Conditions {
		if c.Required && !c.OK {
			out = append(out, c.Name)
		}
	}
	return out
}

// Text is the plain-text answer: "ready" or "not ready: a, b", then one
// line per condition (name, state, detail).
func (r Readiness) Text() string {
	var b strings.Builder
	if r.Ready {
		b.WriteString("ready\n")
	} else {
		fmt.Fprintf(&b, "not ready: %s\n", strings.Join(r.Failing(), ", "))
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, c := range r.Conditions {
		state := "ok"
		if !c.OK {
			state = "FAILING"
		}
		kind := ""
		if !c.Required {
			kind = " (reported only)"
		}
		fmt.Fprintf(tw, "  %s\t%s%s\t%s\n", c.Name, state, kind, c.Detail)
	}
	_ = tw.Flush()
	return b.String()
}

// ReadyHandler serves /ready: 200 while ready, else 503; the body lists
// every condition, as text or, with ?format=json (or Accept:
// application/json), as JSON.
func ReadyHandler(ready func() Readiness) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rd := ready()
		code := http.StatusOK
		if !rd.Ready {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			writeIndented(w, rd)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(code)
		_, _ = w.Write([]byte(rd.Text()))
	}
}

// AlwaysReady is a readiness with no conditions: always ready.
func AlwaysReady() Readiness { return Readiness{Ready: true} }
