package observability

import (
	"strconv"
	"testing"
	"time"
)

func TestAppendMillisReadsAsTheFloat(t *testing.T) {
	for _, us := range []int64{0, 1, 7, 10, 100, 999, 1000, 1001, 1500, 12345, 120000, 987654321, -2500} {
		want := strconv.FormatFloat(float64(us)/1000, 'f', -1, 64)
		if got := string(appendMillis(nil, us)); got != want {
			t.Errorf("appendMillis(%d) = %q, want %q", us, got, want)
		}
	}
}

func TestAppendQuotedTime(t *testing.T) {
	loc := time.FixedZone("x", -7*3600)
	for _, tm := range []time.Time{
		time.Date(2026, 12, 2, 21, 5, 3, 123456789, time.UTC),
		time.Date(2026, 1, 9, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999999, loc), // another zone: written in UTC
		time.Date(5, 3, 4, 5, 6, 7, 8e6, time.UTC),
		time.Date(12345, 1, 1, 0, 0, 0, 0, time.UTC), // past 9999: AppendFormat's way
		{},
	} {
		want := `"` + tm.UTC().Format(timeLayout) + `"`
		if got := string(appendQuotedTime(nil, tm)); got != want {
			t.Errorf("appendQuotedTime(%v) = %s, want %s", tm, got, want)
		}
	}
}
