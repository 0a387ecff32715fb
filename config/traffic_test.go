package config_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/meshvm/mesh/config"
)

const trafficYAML = `
policies:
  services:
    orders:
      timeout: 4s
      load_balancer: {policy: ring_hash, hash: {header: x-user}, ring_size: 2048}
control:
  services:
    orders:
      mtls_mode: strict
      subsets:
        - {name: v1, match: {version: v1}}
        - name: v2
          match: {version: v2, tag: canary}
          policy: {timeout: 1s, retries: {attempts: 0}}
      default_subset: v1
      routes:
        - {name: testers, headers: [{name: x-canary, exact: "1"}], subset: v2}
        - name: canary
          path_prefix: /api
          split: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
          mirror: {subset: v2, percent: 5}
          timeout: 2s
        - name: rehearse
          headers: [{name: x-fault}]
          fault:
            delay: {fixed: 1s, percent: 10}
            abort: {http_status: 503, percent: 5.5}
            headers: [{name: x-fault}]
        - {path: /old, redirect: {path: /new}}
        - {path_regex: "^/pay/.*", service: payments, methods: [POST], query: [{name: dry_run}]}
    payments:
      subsets: [{name: blue, match: {env: prod}}]
`

func TestTrafficLoads(t *testing.T) {
	c, err := Load(Options{File: writeFile(t, trafficYAML), Role: RoleControl})
	if err != nil {
		t.Fatal(err)
	}
	o := c.Control.Services["orders"]
	if o.MTLSMode != "strict" || o.DefaultSubset != "v1" || len(o.Subsets) != 2 || len(o.Routes) != 5 {
		t.Fatalf("orders %+v", o)
	}
	// A subset's policy is the service's with the subset's fields on top.
	v2 := o.Subsets[1].Policy
	if v2.Timeout != time.Second || v2.Retries.Attempts != 0 || v2.LoadBalancer.Hash.Header != "x-user" || v2.ConnectTimeout != time.Second {
		t.Errorf("v2 policy %+v", v2)
	}
	if o.Subsets[0].Policy.ConnectTimeout != 0 {
		t.Errorf("v1 has no policy of its own, got %+v", o.Subsets[0].Policy)
	}
	if lb := c.Policies.For("orders").LoadBalancer; lb.Policy != "ring_hash" || lb.RingSize != 2048 || !lb.Hashed() {
		t.Errorf("load balancer %+v", lb)
	}
	r := o.Routes[1]
	if r.Split[1].Subset != "v2" || r.Split[1].Weight != 10 || r.Mirror.Percent != 5 || r.Timeout != 2*time.Second {
		t.Errorf("canary %+v", r)
	}
	f := o.Routes[2].Fault
	if f.Delay.Fixed != time.Second || f.Abort.HTTPStatus != 503 || f.Abort.Percent != 5.5 || f.Headers[0].Name != "x-fault" {
		t.Errorf("fault %+v", f)
	}
}

func TestTrafficErrors(t *testing.T) {
	base := `
control:
  services:
    orders:
      subsets: [{name: v1, match: {version: v1}}, {name: v2, match: {version: v2}}]
    payments:
      subsets: [{name: blue, match: {color: blue}}]
`
	for _, c := range []struct{ name, body, path, want string }{
		{"unknown subset in a split", `routes: [{split: [{subset: v1, weight: 50}, {subset: v3, weight: 50}]}]`,
			"control.services.orders.routes[0].split[1].subset", `unknown subset "v3" of orders (subsets: v1, v2)`},
		{"unknown subset of another service", `routes: [{service: payments, subset: green}]`,
			"control.services.orders.routes[0].subset", `unknown subset "green" of payments (subsets: blue)`},
		{"subset of a service without subsets", `routes: [{service: search, subset: v1}]`,
			"control.services.orders.routes[0].subset", `unknown subset "v1" of search (subsets: none configured)`},
		{"bad service name", `routes: [{service: Search_1}]`, "control.services.orders.routes[0].service", "not a valid service name"},
		{"unknown default subset", `default_subset: v9`, "control.services.orders.default_subset", `unknown subset "v9"`},
		{"weights under 100", `routes: [{split: [{subset: v1, weight: 50}, {subset: v2, weight: 40}]}]`,
			"control.services.orders.routes[0].split", "add up to 100, got 90"},
		{"zero weight", `routes: [{split: [{subset: v1, weight: 100}, {subset: v2, weight: 0}]}]`,
			"control.services.orders.routes[0].split[1].weight", "must be more than 0"},
		{"negative weight", `routes: [{split: [{subset: v1, weight: 110}, {subset: v2, weight: -10}]}]`,
			"control.services.orders.routes[0].split[1].weight", "must be more than 0"},
		{"target twice", `routes: [{split: [{subset: v1, weight: 50}, {service: orders, subset: v1, weight: 50}]}]`,
			"control.services.orders.routes[0].split[1]", "orders/v1 is listed twice"},
		{"bad path regex", `routes: [{path_regex: "((", subset: v2}]`, "control.services.orders.routes[0].path_regex", "not an RE2 regular expression"},
		{"bad header regex", `routes: [{headers: [{name: x-a, regex: "[a"}], subset: v2}]`, "control.services.orders.routes[0].headers[0].regex", "not an RE2 regular expression"},
		{"identical matches", `routes: [{headers: [{name: x-canary, exact: "1"}], subset: v2}, {headers: [{name: x-canary, exact: "1"}], subset: v1}]`,
			"control.services.orders.routes[1]", "can never match: routes[0] (every path) comes first"},
		{"after a match-all", `routes: [{subset: v2}, {path: /x, methods: [GET], subset: v1}]`,
			"control.services.orders.routes[1]", "can never match: routes[0] (every path)"},
		{"after a covering prefix", `routes: [{path_prefix: /api, subset: v2}, {path_prefix: /api/v1, subset: v1}]`,
			"control.services.orders.routes[1]", "can never match: routes[0] (path_prefix /api)"},
		{"fault without delay or abort", `routes: [{fault: {headers: [{name: x-fault}]}}]`, "control.services.orders.routes[0].fault", "needs a delay or an abort"},
		{"fault percent over 100", `routes: [{fault: {abort: {http_status: 503, percent: 120}}}]`, "control.services.orders.routes[0].fault.abort.percent", "at most 100, got 120"},
		{"fault percent missing", `routes: [{fault: {delay: {fixed: 1s}}}]`, "control.services.orders.routes[0].fault.delay.percent", "more than 0"},
		{"fault delay without duration", `routes: [{fault: {delay: {percent: 10}}}]`, "control.services.orders.routes[0].fault.delay.fixed", "more than 0"},
		{"abort with both statuses", `routes: [{fault: {abort: {http_status: 503, grpc_status: 14, percent: 1}}}]`, "control.services.orders.routes[0].fault.abort", "exactly one of http_status and grpc_status"},
		{"bad grpc status", `routes: [{fault: {abort: {grpc_status: 20, percent: 1}}}]`, "control.services.orders.routes[0].fault.abort.grpc_status", "1 to 16"},
		{"mirror percent", `routes: [{mirror: {subset: v2, percent: 0}, path: /x}]`, "control.services.orders.routes[0].mirror.percent", "more than 0"},
		{"mirror unknown subset", `routes: [{mirror: {subset: v7, percent: 10}}]`, "control.services.orders.routes[0].mirror.subset", `unknown subset "v7"`},
		{"gateway-only field", `routes: [{host: shop.example.com, subset: v2}]`, "control.services.orders.routes[0].host", "only applies to a gateway's routes"},
		{"fault on a redirect", `routes: [{redirect: {path: /y}, fault: {abort: {http_status: 500, percent: 1}}}]`, "control.services.orders.routes[0].fault", "only applies to a route to a service or split"},
		{"duplicate subset", `subsets: [{name: v1, match: {version: v1}}, {name: v1, match: {version: v9}}]`, "control.services.orders.subsets[1].name", "already the name"},
		{"same match twice", `subsets: [{name: a, match: {version: v1}}, {name: b, match: {version: v1}}]`, "control.services.orders.subsets[1].match", "same as subsets[0]'s"},
		{"subset without match", `subsets: [{name: a}]`, "control.services.orders.subsets[0].match", "is required"},
		{"bad subset name", `subsets: [{name: "V 2", match: {version: v2}}]`, "control.services.orders.subsets[0].name", "not a subset name"},
		{"bad subset policy", `subsets: [{name: a, match: {version: a}, policy: {retries: {attempts: 20}}}]`, "control.services.orders.subsets[0].policy.retries.attempts", "between 0 and 10"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := base
			if strings.HasPrefix(c.body, "subsets:") {
				body = strings.Replace(body, "      subsets: [{name: v1, match: {version: v1}}, {name: v2, match: {version: v2}}]\n", "", 1)
			}
			body = strings.Replace(body, "    orders:\n", "    orders:\n      "+c.body+"\n", 1)
			_, err := Load(Options{File: writeFile(t, body), Role: RoleControl})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error", err)
			}
			for _, f := range ce.Fields {
				if f.Path == c.path && strings.Contains(f.Msg, c.want) {
					return
				}
			}
			t.Errorf("got %v, want %s: ...%s", err, c.path, c.want)
		})
	}
	for _, c := range []struct{ name, lb, path, want string }{
		{"ring hash without a key", `{policy: ring_hash}`, "policies.default.load_balancer.hash", "ring_hash needs exactly one of header, cookie and source_ip (has 0)"},
		{"two keys", `{policy: maglev, hash: {header: x-user, source_ip: true}}`, "policies.default.load_balancer.hash", "(has 2)"},
		{"hash without hashing", `{policy: round_robin, hash: {header: x-user}}`, "policies.default.load_balancer.hash", "only applies to policy ring_hash or maglev"},
		{"ring size on maglev", `{policy: maglev, hash: {cookie: s}, ring_size: 100}`, "policies.default.load_balancer.ring_size", "only applies to policy ring_hash"},
		{"unknown policy", `{policy: sticky}`, "policies.default.load_balancer.policy", "sticky"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Options{File: writeFile(t, "policies:\n  default:\n    load_balancer: "+c.lb+"\n"), Role: RoleControl})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error", err)
			}
			for _, f := range ce.Fields {
				if f.Path == c.path && strings.Contains(f.Msg, c.want) {
					return
				}
			}
			t.Errorf("got %v, want %s: ...%s", err, c.path, c.want)
		})
	}
}

// TestTrafficDocExample loads the control.services example of
// docs/configuration.md, so the documented example stays valid.
func TestTrafficDocExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i := strings.Index(s, "### `control.services.<name>`")
	if i < 0 {
		t.Fatal("no control.services section in docs/configuration.md")
	}
	start := strings.Index(s[i:], "```yaml\n") + i + len("```yaml\n")
	end := strings.Index(s[start:], "```") + start
	c, err := Load(Options{File: writeFile(t, s[start:end]), Role: RoleControl})
	if err != nil {
		t.Fatal(err)
	}
	if o := c.Control.Services["orders"]; len(o.Subsets) != 2 || len(o.Routes) != 4 || o.Subsets[1].Policy.Timeout != 2*time.Second {
		t.Errorf("orders %+v", o)
	}
}
