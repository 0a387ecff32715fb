//go:build !unix

package h1

import "syscall"

// FillRaw is Fill (a buffer is held while waiting) where the descriptor
// cannot be read directly.
func (r *Reader) FillRaw(rc syscall.RawConn) error { return r.Fill() }
