package identity_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/identity/identitytest"
)

// Files installs the identity on disk, installs it again only when it
// changed, and keeps the installed one when the files are wrong.
func TestFilesReload(t *testing.T) {
	ca := identitytest.NewCA(t, "mesh.local")
	dir := t.TempDir()
	paths := ca.WriteFiles(t, dir, "web", time.Hour, nil)
	var creds identity.Credentials
	f := &identity.Files{CertFile: paths.Cert, KeyFile: paths.Key, BundleFile: paths.Bundle, Creds: &creds}
	if changed, err := f.Load(time.Now()); err != nil || !changed {
		t.Fatalf("first load: %v, %v", changed, err)
	}
	first := creds.Leaf().SerialNumber
	if creds.ID().String() != "spiffe://mesh.local/ns/default/svc/web" {
		t.Fatalf("identity %s", creds.ID())
	}
	if changed, err := f.Load(time.Now()); err != nil || changed {
		t.Fatalf("unchanged files: changed=%v, %v", changed, err)
	}
	// A certificate whose key is not there yet: refused, the old stays.
	c, _ := ca.Issue(t, "web", time.Hour)
	if err := os.WriteFile(paths.Cert, c, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(time.Now()); err == nil {
		t.Fatal("a certificate with another key was installed")
	}
	if creds.Leaf().SerialNumber.Cmp(first) != 0 {
		t.Fatal("the installed identity changed after a bad set")
	}
	// A certificate from another CA than the bundle: refused with why.
	other := identitytest.NewCA(t, "mesh.local")
	otherPaths := other.WriteFiles(t, t.TempDir(), "web", time.Hour, ca.Bundle())
	f2 := &identity.Files{CertFile: otherPaths.Cert, KeyFile: otherPaths.Key, BundleFile: otherPaths.Bundle, Creds: &creds}
	if _, err := f2.Load(time.Now()); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("a certificate not chaining to the bundle: %v", err)
	}
	// The whole new set: installed.
	ca.WriteFiles(t, dir, "web", time.Hour, nil)
	if changed, err := f.Load(time.Now()); err != nil || !changed || creds.Leaf().SerialNumber.Cmp(first) == 0 {
		t.Fatalf("rotated files: changed=%v, %v", changed, err)
	}
	if st, _ := os.Stat(paths.Key); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode().Perm())
	}
}
