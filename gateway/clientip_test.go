package gateway

import (
	"net/http"
	"testing"
)

func TestClientIP(t *testing.T) {
	trusted, err := parseTrusted([]string{"10.0.0.0/8", "192.168.1.7"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{name: "untrusted peer: its address, whatever it says", peer: "203.0.113.5:4000", xff: []string{"1.2.3.4"}, want: "203.0.113.5"},
		{name: "trusted balancer: the address it saw", peer: "10.0.0.2:4000", xff: []string{"198.51.100.9"}, want: "198.51.100.9"},
		{name: "a forged left part is not believed", peer: "10.0.0.2:4000", xff: []string{"6.6.6.6, 198.51.100.9"}, want: "198.51.100.9"},
		{name: "through two trusted proxies", peer: "10.0.0.2:4000", xff: []string{"198.51.100.9, 192.168.1.7"}, want: "198.51.100.9"},
		{name: "several header lines", peer: "10.0.0.2:4000", xff: []string{"198.51.100.9", "10.1.1.1"}, want: "198.51.100.9"},
		{name: "garbage stops at the last readable hop", peer: "10.0.0.2:4000", xff: []string{"nonsense, 10.1.1.1"}, want: "10.1.1.1"},
		{name: "trusted peer without the header", peer: "10.0.0.2:4000", want: "10.0.0.2"},
		{name: "IPv6 peer", peer: "[2001:db8::1]:4000", xff: []string{"1.2.3.4"}, want: "2001:db8::1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: c.peer, Header: http.Header{}}
			for _, v := range c.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := trusted.clientIP(r); got != c.want {
				t.Fatalf("client IP %q, want %q", got, c.want)
			}
		})
	}
	if _, err := parseTrusted([]string{"10.0.0.0/33"}); err == nil {
		t.Fatal("a bad CIDR was accepted")
	}
}
