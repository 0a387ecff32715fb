package tcpproxy

import "syscall"

// syscallEMFILE: out of file descriptors, a reason to back off, not stop.
const syscallEMFILE = syscall.EMFILE
