//go:build unix

package daemon

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		environ []string
		want    []string // nil: no re-exec
	}{
		{"no GODEBUG", []string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + sysmonSetting}},
		{"other settings kept", []string{"GODEBUG=gctrace=1", "HOME=/"}, []string{"HOME=/", "GODEBUG=gctrace=1," + sysmonSetting}},
		{"already set (the re-executed process)", []string{"GODEBUG=" + sysmonSetting}, nil},
		{"turned off", []string{"GODEBUG=gctrace=1,schedtrace=0"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := sysmonEnv(tc.environ)
			if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
				t.Errorf("sysmonEnv(%q) = %q, %v; want %q", tc.environ, got, ok, tc.want)
			}
		})
	}
}
