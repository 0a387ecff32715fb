package chain

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/routematch"
)

// mirror copies requests to the mirror clusters of the request's route
// (RouteAction.request_mirror_policies, each for its runtime_fraction of
// the requests), as Envoy's shadowing does: the copy carries the Host
// with "-shadow" appended, goes through the mirror cluster's own outbound
// steps (endpoints, breaker, tries...) on a goroutine of its own, and its
// response is discarded. It never slows or fails the original:
//   - at most maxMirrorsInFlight copies are in flight per mirror cluster;
//     a copy over that is dropped (mesh_mirror_requests_total
//     {result="dropped"});
//   - a request without a body is copied before it is sent; one with a
//     body is copied after the original was sent, from what the original
//     read (kept up to maxMirrorBody bytes: a larger body drops the copy),
//     so the original's body is never read ahead;
//   - a copy runs under a context of its own (the mirror cluster's
//     timeout, else 15s), not the original's.
//
// A cluster no route with a mirror sends to has no mirror step.
type mirror struct{ u *upstream }

// maxMirrorsInFlight bounds the copies in flight per mirror cluster.
const maxMirrorsInFlight = 64

// maxMirrorBody is the largest request body copied to a mirror.
const maxMirrorBody = maxReplay // the replayBody that keeps it stops there

// defaultMirrorTimeout bounds a copy to a mirror cluster without a
// timeout (Envoy's default route timeout).
const defaultMirrorTimeout = 15 * time.Second

func buildMirror(t *UpstreamTarget) (Step, error) {
	if !routesTo(t, func(rt *routematch.Route) bool { return len(rt.Mirrors) > 0 }) {
		return nil, nil
	}
	return &mirror{u: t.u}, nil
}

func (*mirror) Name() string { return "mirror" }

// shadow is one copy about to go out.
type shadow struct {
	to  *upstream
	req *http.Request
}

func (s *mirror) Serve(x *Exchange, next Next) error {
	rt := x.route
	if rt == nil || len(rt.Mirrors) == 0 {
		return next.Serve(x)
	}
	var buf [4]shadow
	copies := buf[:0]
	for i := range rt.Mirrors {
		m := &rt.Mirrors[i]
		if !m.Fraction.Hit(rand.Uint64()) {
			continue
		}
		to := x.h.services[m.Cluster]
		if to == nil {
			continue // not in the table: nothing to send it to
		}
		if to.svc.mirrors.Add(1) > maxMirrorsInFlight {
			to.svc.mirrors.Add(-1)
			to.svc.m.Mirrored(false, true)
			continue
		}
		copies = append(copies, shadow{to: to, req: shadowRequest(x.R, m)})
	}
	if len(copies) == 0 {
		return next.Serve(x)
	}
	r := x.R
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		for _, c := range copies {
			go c.send(nil)
		}
		return next.Serve(x)
	}
	if r.ContentLength > maxMirrorBody {
		dropAll(copies)
		return next.Serve(x)
	}
	orig := r.Body
	tee := newReplayBody(orig, r.ContentLength)
	r.Body = mirroredBody{tee, orig}
	err := next.Serve(x)
	r.Body = orig
	if !tee.complete() {
		// Not all of it was read (or it was larger than the bound): the
		// copy would not be the request.
		dropAll(copies)
		return err
	}
	for _, c := range copies {
		go c.send(tee.buf)
	}
	return err
}

func dropAll(copies []shadow) {
	for _, c := range copies {
		c.to.svc.mirrors.Add(-1)
		c.to.svc.m.Mirrored(false, true)
	}
}

// shadowRequest is the copy of r for mirror m, without its body: a new
// request (headers cloned now, before the original's are changed by its
// sending) with the shadow Host.
func shadowRequest(r *http.Request, m *routematch.Mirror) *http.Request {
	u := *r.URL
	c := &http.Request{
		Method:     r.Method,
		URL:        &u,
		Proto:      r.Proto,
		ProtoMajor: r.ProtoMajor,
		ProtoMinor: r.ProtoMinor,
		Header:     r.Header.Clone(),
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		RequestURI: r.RequestURI,
	}
	if !m.NoHostSuffix {
		c.Host = routematch.ShadowHost(r.Host)
	}
	return c
}

// send runs the copy through its cluster's outbound steps with body (nil:
// none), discarding the response, and releases its in-flight slot.
func (c shadow) send(body []byte) {
	to := c.to
	defer to.svc.mirrors.Add(-1)
	d := to.pol.timeout
	if d <= 0 {
		d = defaultMirrorTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r := c.req.WithContext(ctx)
	r.Body, r.ContentLength = http.NoBody, 0
	if body != nil {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	w := &discardWriter{h: http.Header{}}
	x := getExchange(w, r, observability.Outbound, to.h)
	x.up = to
	err := to.rest.Serve(x) // the mirror cluster's own steps, not its routes

	putExchange(x)
	to.svc.m.Mirrored(err == nil && w.status != 0, false)
}

// discardWriter is where a mirrored copy's response goes.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}

func (w *discardWriter) Flush() {}

// mirroredBody is the original request body read through a replayBody,
// which keeps the copy the mirror sends (up to maxMirrorBody bytes).
type mirroredBody struct {
	*replayBody
	io.Closer
}
