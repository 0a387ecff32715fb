package daemon

// ballastSize is heap the collector counts as live but nothing reads or
// writes (a pointer-free slice the runtime takes fresh, untouched, from the
// operating system: it costs address space, not resident memory). The
// agent's own live heap is ~4 MB, under the runtime's 4 MB minimum goal,
// so at GOGC=100 it collected after every ~4 MB allocated (~800 proxied
// requests, 10-15 cycles a second under load at GOMAXPROCS=1). With the
// ballast the goal is twice (live + 8 MB): about five times fewer cycles,
// for ~8 MB more resident heap between cycles, and the same growth per
// connection (the goal still grows by twice what a connection keeps live).
// docs/decisions.md, decision 45.
const ballastSize = 8 << 20

// newBallast returns the ballast; the caller keeps it reachable for as
// long as the process serves.
func newBallast() []byte { return make([]byte, ballastSize) }
