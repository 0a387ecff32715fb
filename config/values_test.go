package config

import (
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestSplitList checks how one string (an environment variable, a YAML
// scalar) becomes a list: at commas, but an upstream's options after a
// comma ("pay=127.0.0.1:9191,tcp") stay with their upstream.
func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		elem reflect.Type
		in   string
		want []string
	}{
		{reflect.TypeOf(""), "a,b", []string{"a", "b"}},
		{reflect.TypeOf(Upstream{}), "pay=127.0.0.1:9191,inv=127.0.0.1:9192", []string{"pay=127.0.0.1:9191", "inv=127.0.0.1:9192"}},
		{reflect.TypeOf(Upstream{}), "pay=127.0.0.1:9191,tcp,inv=127.0.0.1:9192", []string{"pay=127.0.0.1:9191,tcp", "inv=127.0.0.1:9192"}},
		{reflect.TypeOf(Upstream{}), "tcp,pay=127.0.0.1:9191", []string{"tcp", "pay=127.0.0.1:9191"}},
	} {
		if got := splitList(tc.elem, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("splitList(%s, %q) = %q, want %q", tc.elem, tc.in, got, tc.want)
		}
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		24 * time.Hour: "24h", time.Minute: "1m", 90 * time.Second: "1m30s", 2 * time.Nanosecond: "2ns",
		time.Hour + time.Second: "1h0m1s", 500 * time.Millisecond: "500ms",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
