//go:build unix

package h1

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// FillRaw is Fill for a connection that exposes its file descriptor: it
// waits until the connection has bytes to read and only then takes a
// buffer from the pool, so a connection waiting for its next request
// holds none. It makes the same system calls as Fill (a read, and after
// EAGAIN a wait in the runtime's poller, then the read again), and
// honours the connection's read deadline.
func (r *Reader) FillRaw(rc syscall.RawConn) error {
	if r.w > r.r {
		return nil
	}
	if r.err != nil {
		return r.err
	}
	r.Release()
	if r.rawRead == nil { // once per Reader: a closure per call would allocate
		r.rawRead = func(fd uintptr) bool {
			r.ensure()
			for {
				r.rawN, r.rawErr = syscall.Read(int(fd), r.buf)
				if r.rawErr != syscall.EINTR {
					break
				}
			}
			if r.rawErr == syscall.EAGAIN {
				r.Release()
				return false // wait until readable
			}
			return true
		}
	}
	err := rc.Read(r.rawRead)
	n, serr := r.rawN, r.rawErr
	r.rawErr = nil
	if err != nil { // the deadline passed or the connection was closed
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			r.err = err
		}
		r.Release()
		return err
	}
	if serr != nil {
		r.err = os.NewSyscallError("read", serr)
		r.Release()
		return r.err
	}
	if n <= 0 {
		r.err = io.EOF
		r.Release()
		return r.err
	}
	r.r, r.w = 0, n
	return nil
}
