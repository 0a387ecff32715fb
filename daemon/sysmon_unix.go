//go:build unix

package daemon

import (
	"os"
	"strings"
	"syscall"
)

// sysmonSetting keeps the Go runtime's monitor thread (sysmon) from
// parking whenever the process goes idle. A proxy goes idle between
// requests at low concurrency (one connection: after every response), and
// a parked sysmon is woken with a futex call by the next system call,
// then runs and sleeps again: ~2.5 system calls and ~2 context switches
// per request per hop on the request's critical path (docs/decisions.md,
// decision 45). The runtime skips that parking when GODEBUG's schedtrace
// is set; an interval of 2^31-1 ms (~24.8 days of uptime) keeps the trace
// itself from being printed. Awake, sysmon backs off to one wake-up per
// 10 ms when there is nothing to do.
const sysmonSetting = "schedtrace=2147483647"

// keepSysmonAwake re-executes the binary once with sysmonSetting added to
// GODEBUG (the runtime reads it only at start-up). A failed exec leaves
// the process running as it was started.
func keepSysmonAwake() {
	env, ok := sysmonEnv(os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure
}

// sysmonEnv returns environ with sysmonSetting added to GODEBUG, or false
// when GODEBUG already sets schedtrace (schedtrace=0 turns this off; the
// re-executed process sees its own setting).
func sysmonEnv(environ []string) ([]string, bool) {
	godebug := ""
	env := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		env = append(env, kv)
	}
	for _, s := range strings.Split(godebug, ",") {
		if strings.HasPrefix(s, "schedtrace=") {
			return nil, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(env, "GODEBUG="+godebug+sysmonSetting), true
}
