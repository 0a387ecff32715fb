package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/meshvm/mesh"

// composers may import roles: the binary and the tools around it.
var composers = map[string]bool{module: true, module + "/demo": true, module + "/bench/upstream": true}

// role is the role a package belongs to ("agent", "controlplane",
// "gateway"), or "" for a leaf.
func role(pkg string) string {
	for _, r := range []string{"agent", "controlplane", "gateway"} {
		if pkg == module+"/"+r || strings.HasPrefix(pkg, module+"/"+r+"/") {
			return r
		}
	}
	return ""
}

// TestRolesAndLeaves: the two floors hold, tests included. A role never
// imports the other role (what they must agree on is in the leaf wire),
// and a leaf never imports a role.
func TestRolesAndLeaves(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}`, "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || composers[f[0]] {
			continue
		}
		pkg, own := f[0], role(f[0])
		checked++
		for _, imp := range f[1:] {
			r := role(imp)
			switch {
			case r == "" || r == own:
			case own == "":
				t.Errorf("leaf %s imports %s (role %s)", pkg, imp, r)
			default:
				t.Errorf("role %s: %s imports %s (role %s); define what both need in package wire", own, pkg, imp, r)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages listed", checked)
	}
}
