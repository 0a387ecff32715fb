package chain

import (
	"errors"
	"net/http"

	"github.com/meshvm/mesh/dataplane/proxy"
)

// render is the one place a path's error becomes the response: it counts
// the refusal in the metric of the step that refused (if any), records
// the reason on the request's record (the access log and the requests
// metric read it from there) and writes the status, x-mesh-reason and
// body (a gRPC status for gRPC calls). An error that is not a
// *proxy.Error is a 502 proxy-error. Nothing may have been written yet.
func render(x *Exchange, err error) {
	var rf *Refusal
	if errors.As(err, &rf) && rf.count != nil {
		rf.count()
	}
	var pe *proxy.Error
	if !errors.As(err, &pe) {
		pe = &proxy.Error{Status: http.StatusBadGateway, Reason: proxy.ReasonProxyError, Err: err}
	}
	x.Rec.SetReason(pe.Reason)
	proxy.WriteError(x.W, x.R, pe)
}

// run serves x on path p, renders what it refused, and aborts the
// client's stream when the response broke off after it had started.
func run(x *Exchange, p *path) {
	err := p.first.Serve(x)
	if err != nil {
		render(x, err)
	}
	aborted := x.aborted
	putExchange(x)
	if aborted {
		panic(http.ErrAbortHandler)
	}
}
