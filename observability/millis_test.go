package observability

import (
	"strconv"
	"testing"
)

func TestAppendMillisReadsAsTheFloat(t *testing.T) {
	for _, us := range []int64{0, 1, 7, 10, 100, 999, 1000, 1001, 1500, 12345, 120000, 987654321, -2500} {
		want := strconv.FormatFloat(float64(us)/1000, 'f', -1, 64)
		if got := string(appendMillis(nil, us)); got != want {
			t.Errorf("appendMillis(%d) = %q, want %q", us, got, want)
		}
	}
}
