package meshtest

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// NodeModules installs the npm packages pinned by dir's package.json and
// package-lock.json (`npm ci`) into a cache directory outside the
// repository, keyed by the lock file's hash, and returns that
// node_modules directory (for NODE_PATH). A second call with the same lock
// file reuses the install; concurrent test processes wait for one another.
// The cache is $MESH_TEST_CACHE, else the user's cache directory
// (~/.cache/mesh-test). Missing node or npm, or a failed install, fails
// the test (apt-get install -y nodejs npm); it never skips.
func NodeModules(t testing.TB, dir string) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs Node.js: %v (apt-get install -y nodejs npm)", err)
		}
	}
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatalf("read the npm lock file: %v", err)
	}
	pkg, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		t.Fatalf("read package.json: %v", err)
	}
	root := os.Getenv("MESH_TEST_CACHE")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.Fatalf("find a cache directory for npm packages (set MESH_TEST_CACHE): %v", err)
		}
		root = filepath.Join(base, "mesh-test")
	}
	sum := sha256.Sum256(append(pkg, lock...))
	key := filepath.Base(dir) + "-" + hex.EncodeToString(sum[:8])
	into := filepath.Join(root, "npm", key)
	modules := filepath.Join(into, "node_modules")
	done := filepath.Join(into, ".installed")
	if _, err := os.Stat(done); err == nil {
		return modules
	}

	if err := os.MkdirAll(filepath.Join(root, "npm"), 0o755); err != nil {
		t.Fatalf("create the npm cache directory: %v", err)
	}
	lf, err := os.OpenFile(into+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("open the npm install lock: %v", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("lock the npm install: %v", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it too
	if _, err := os.Stat(done); err == nil {
		return modules // another process installed it while this one waited
	}
	_ = os.RemoveAll(into)
	if err := os.MkdirAll(into, 0o755); err != nil {
		t.Fatalf("create %s: %v", into, err)
	}
	for name, data := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
		if err := os.WriteFile(filepath.Join(into, name), data, 0o644); err != nil {
			t.Fatalf("copy %s: %v", name, err)
		}
	}
	start := time.Now()
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")
	cmd.Dir = into
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", into, err, out)
	}
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		t.Fatalf("mark the npm install done: %v", err)
	}
	t.Logf("installed the npm packages of %s into %s in %s", dir, into, time.Since(start).Round(time.Millisecond))
	return modules
}
