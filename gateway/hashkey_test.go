package gateway_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/meshvm/mesh/authn"
)

// `mesh gateway hash-key` prints what control.gateway.api_keys[].hash
// takes for a key read from standard input; with none, it fails.
func TestHashKeyCommand(t *testing.T) {
	for _, c := range []struct{ name, stdin, want string }{
		{"a key with a line end", "s3cret-key\n", authn.HashAPIKey("s3cret-key")},
		{"a key without one", "s3cret-key", authn.HashAPIKey("s3cret-key")},
		{"only the first line", "k1\r\nk2\n", authn.HashAPIKey("k1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(mesh(t), "gateway", "hash-key")
			cmd.Stdin = strings.NewReader(c.stdin)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("mesh gateway hash-key: %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != c.want {
				t.Fatalf("printed %q, want %q", got, c.want)
			}
		})
	}
	cmd := exec.Command(mesh(t), "gateway", "hash-key")
	cmd.Stdin = strings.NewReader("")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no key on standard input") {
		t.Fatalf("no key: err %v, output %q", err, out)
	}
}
