package chain_test

import (
	"testing"

	"github.com/meshvm/mesh/dataplane/chain"
)

func TestServiceName(t *testing.T) {
	for _, tc := range []struct{ name, host, want string }{
		{name: "bare", host: "orders", want: "orders"},
		{name: "port", host: "orders:15001", want: "orders"},
		{name: "mesh", host: "Orders.Mesh", want: "orders"},
		{name: "consul", host: "orders.service.consul", want: "orders"},
		{name: "consul dc port", host: "orders.service.eu-1.consul:80", want: "orders"},
		{name: "fqdn", host: "orders.mesh.", want: "orders"},
		{name: "consul node name", host: "web1.node.consul", want: ""},
		{name: "empty", host: "", want: ""},
		{name: "ipv6", host: "[::1]:80", want: "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chain.ServiceName(tc.host); got != tc.want {
				t.Errorf("ServiceName(%q) = %q, want %q", tc.host, got, tc.want)
			}
		})
	}
}
