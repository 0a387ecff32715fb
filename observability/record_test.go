package observability_test

import (
	"regexp"
	"testing"

	"github.com/meshvm/mesh/observability"
)

// TestNewRequestID: every ID is a version 4, variant 10 UUID in its
// canonical form, and no two are alike.
func TestNewRequestID(t *testing.T) {
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := observability.NewRequestID()
		if !uuid4.MatchString(id) {
			t.Fatalf("%q is not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("%q generated twice", id)
		}
		seen[id] = true
	}
}
