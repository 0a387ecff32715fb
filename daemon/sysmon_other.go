//go:build !unix

package daemon

func keepSysmonAwake() {}
