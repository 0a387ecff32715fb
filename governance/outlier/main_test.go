package outlier

import (
	"testing"

	"go.uber.org/goleak"
)

// Run owns a goroutine: every test must leave none behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
