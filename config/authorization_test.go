package config_test

import (
	"strings"
	"testing"

	"github.com/meshvm/mesh/config"
)

// TestAuthorizationConfig: control.authorization loads as written and
// rule names default to <action>-<index>.
func TestAuthorizationConfig(t *testing.T) {
	file := writeFile(t, `
control:
  authorization:
    - service: orders.shop
      default: deny
      rules:
        - {action: deny, from: [batch]}
        - {name: reads, action: allow, from: [web, "*"], methods: [GET], paths: [/api/], headers: [{name: x-env, regex: "prod|staging"}]}
`)
	cfg, err := config.Load(config.Options{File: file})
	if err != nil {
		t.Fatal(err)
	}
	a, ok := cfg.Control.AuthorizationFor("orders.shop")
	if !ok || a.Default != config.AuthzDeny || len(a.Rules) != 2 {
		t.Fatalf("authorization of orders.shop: %+v", a)
	}
	if n := a.Rules[0].RuleName(0); n != "deny-0" {
		t.Errorf("first rule named %q, want deny-0", n)
	}
	r := a.Rules[1]
	if r.RuleName(1) != "reads" || r.Headers[0].Regex != "prod|staging" || r.From[1] != "*" {
		t.Errorf("second rule %+v", r)
	}
}

// TestAuthorizationErrors: every mistake is reported with its field path
// and line.
func TestAuthorizationErrors(t *testing.T) {
	file := writeFile(t, `control:
  authorization:
    - service: Orders
      default: maybe
      rules:
        - {action: permit, methods: [get]}
        - {action: allow}
        - {action: allow, from: []}
        - {action: allow, headers: [{name: x-env, regex: "pro(d"}]}
        - {action: allow, headers: [{name: x-env, exact: a, prefix: b}]}
        - {name: default, action: allow, paths: [api]}
    - service: orders
      default: allow
    - service: orders
      default: allow
`)
	_, err := config.Load(config.Options{File: file})
	if err == nil {
		t.Fatal("config loaded")
	}
	for _, want := range []string{
		`:3: control.authorization[0].service: "Orders" is not a valid service name`,
		`:4: control.authorization[0].default: "maybe" is not one of allow, deny`,
		`:6: control.authorization[0].rules[0].action: "permit" is not one of allow, deny`,
		`:6: control.authorization[0].rules[0].methods[0]: "get" is not an HTTP method`,
		`:7: control.authorization[0].rules[1]: an empty rule would match every request`,
		`:8: control.authorization[0].rules[2].from: is empty`,
		`:9: control.authorization[0].rules[3].headers[0].regex: "pro(d" is not a regular expression`,
		`:10: control.authorization[0].rules[4].headers[0]: set exactly one of exact, prefix, regex, present`,
		`:11: control.authorization[0].rules[5].name: "default" is not a rule name`,
		`:11: control.authorization[0].rules[5].paths[0]: "api" is not a path prefix`,
		`:14: control.authorization[2].service: orders already has an entry`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s:\n%v", want, err)
		}
	}
}
