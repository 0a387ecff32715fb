package controlplane

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/mesh/controlplane/ca"
)

// run runs `mesh control ARGS...` in-process and returns stdout and stderr.
func runControl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewCommand()
	cmd.PersistentFlags().String("config", "", "")
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// TestTokenCommands: `mesh control token create` writes a 0600 token file
// the CA accepts for the named service only; `token revoke` makes every
// control plane on the same directory refuse it.
func TestTokenCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	tokFile := filepath.Join(t.TempDir(), "agent-web.token")
	_, stderr, err := runControl(t, "token", "create", "--service", "web", "--node", "vm-1", "--ttl", "720h", "--ca-dir", dir, "--output", tokFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "for web on node vm-1, expires") {
		t.Fatalf("stderr %q", stderr)
	}
	fi, err := os.Stat(tokFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v", err, fi.Mode().Perm())
	}
	data, _ := os.ReadFile(tokFile)
	c, err := ca.Open(ca.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := c.VerifyToken(string(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(claims.Services) != 1 || claims.Services[0] != "web" || claims.Node != "vm-1" {
		t.Fatalf("claims %+v", claims)
	}
	if _, _, err := runControl(t, "token", "revoke", claims.ID, "--ca-dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := c.VerifyToken(string(data)); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("after revoke: %v", err)
	}
	if _, _, err := runControl(t, "token", "create", "--ca-dir", dir); err == nil || !strings.Contains(err.Error(), "--service is required") {
		t.Fatalf("create without --service: %v", err)
	}
	out, stderr, err := runControl(t, "ca", "rotate", "--ca-dir", dir)
	if err != nil || !strings.Contains(stderr, "holds 2 roots") {
		t.Fatalf("rotate: %v %q", err, stderr)
	}
	out, _, err = runControl(t, "ca", "show", "--ca-dir", dir)
	if err != nil || strings.Count(out, "BEGIN CERTIFICATE") != 2 || strings.Contains(out, "PRIVATE") {
		t.Fatalf("show: %v\n%s", err, out)
	}
}
