package chain

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/governance/retry"
)

// tries ends the outbound path: it makes the tries of one request — pick
// an endpoint (load balancing over the endpoints step's set, outlier
// ejection, avoiding the previous try's endpoint), hold a max_pending slot
// while connecting, send under the per-try timeout — and either retries
// (retry_on, attempts, a jittered backoff, within the retry budget and the
// route deadline) or relays the response. It records the request's
// outcome for the breaker.
type tries struct{ u *upstream }

func buildTries(t *UpstreamTarget) (Step, error) { return &tries{u: t.u}, nil }

func (*tries) Name() string { return "tries" }

func (s *tries) Serve(x *Exchange, _ Next) error {
	out, aborted, err := s.u.exchange(x)
	x.outcome, x.aborted = out, aborted
	if x.load != nil { // the load report's count, begun at the first try
		x.load.End(out == succeeded || (out == abandoned && x.R.Context().Err() != nil), time.Since(x.loadStart))
	}
	return err
}

// exchange makes the tries of one request: pick an endpoint, send, and
// either retry (another endpoint, after a jittered backoff, within the
// budget) or relay the response. aborted means the response broke off
// after it had started: the caller must abort the client's stream.
// deadline is the route timeout's (zero: none); each try runs under one
// context, see tryContext.
func (u *upstream) exchange(x *Exchange) (out outcome, aborted bool, err error) {
	w, r, deadline, set := x.W, x.R, x.deadline, x.set
	svc := u.svc
	attempts, retryOn, perTry, replay := u.pol.attempts, &u.pol.retryOn, u.pol.perTry, u.pol.replay
	if rp := x.retries; rp != nil {
		attempts, retryOn, perTry = rp.Attempts, &rp.Policy, rp.PerTry
		replay = attempts > 0 && rp.Policy.On&^retry.OnConnectFailure != 0
	}
	body := requestBody{has: r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0}
	if body.has && replay && r.ContentLength <= maxReplay {
		body.rb = newReplayBody(r.Body, r.ContentLength)
	}
	rec := x.Rec
	var att proxy.Attempt
	prev := -1
	retries := 0
	retrying := false // this try holds a slot of the retry budget
	hash, hashed := requestHash(x, set)
	w = x.W // requestHash may have wrapped it (a generated cookie)
	for {
		var i int
		if hashed {
			i = set.picker.PickHash(hash, retries)
		} else {
			i = set.pick(prev)
		}
		if prev < 0 && i < len(set.loads) && set.loads[i] != nil {
			x.load, x.loadStart = set.loads[i], time.Now()
			x.load.Begin()
		}
		prev = i
		addr, hst := set.eps[i].Addr, set.hosts[i]
		rec.SetUpstream(u.name, addr)
		tryCtx, cancelTry := tryContextFor(r.Context(), deadline, perTry)
		att.Ctx = tryCtx
		att.Body = body.next()
		att.Protocol = set.eps[i].Protocol
		if !svc.limits.Pending.Acquire() {
			u.endTry(cancelTry, retrying, nil)
			return abandoned, false, Refuse(http.StatusServiceUnavailable, proxy.ReasonOverflow, svc.limited.ConcurrencyLimited)
		}
		hst.active.Add(1)
		resp, err := u.h.fwd.Send(w, r, addr, &att)
		svc.limits.Pending.Release()

		if err != nil {
			u.endTry(cancelTry, retrying, hst)
			retrying = false
			f, gone := failureOf(err)
			if gone || r.Context().Err() != nil {
				return abandoned, false, err
			}
			if f == retry.NoFailure { // refused by the mesh (CONNECT)
				return abandoned, false, err
			}
			svc.report(hst, outlier.LocalFailure)
			body.tried(f)
			if !expired(deadline) && retries < attempts &&
				retryOn.Retriable(retry.Attempt{Failure: f, GRPCStatus: retry.NoGRPCStatus}) &&
				body.replayable() && u.acquireRetry() {
				retries++
				retrying = true
				rec.AddRetry()
				svc.m.Retry()
				if !backoff(r.Context(), deadline, retries) {
					svc.budget.Release()
					return outcomeOf(r), false, svc.countTimeout(timeoutOrGone(r))
				}
				continue
			}
			if expired(deadline) && r.Context().Err() == nil {
				err = timeoutOrGone(r) // the route timeout, whatever the try saw
			}
			return failed, false, svc.countTimeout(err)
		}

		status := resp.StatusCode
		gs := grpcStatus(resp.Header) // a trailers-only gRPC response
		eff := effectiveStatus(status, gs)
		if retries < attempts && (eff >= 400 || gs > 0) {
			a := retry.Attempt{Status: status, GRPCStatus: gs, RateLimited: rateLimited(resp.Header)}
			body.tried(retry.NoFailure)
			if retryOn.Retriable(a) && !expired(deadline) && body.replayable() && u.acquireRetry() {
				svc.report(hst, outlier.Classify(eff, false))
				proxy.Discard(resp)
				u.endTry(cancelTry, retrying, hst)
				retries++
				retrying = true
				rec.AddRetry()
				svc.m.Retry()
				if !backoff(r.Context(), deadline, retries) {
					svc.budget.Release()
					return outcomeOf(r), false, svc.countTimeout(timeoutOrGone(r))
				}
				continue
			}
		}
		if v := resp.Header["X-Mesh-Reason"]; len(v) > 0 {
			rec.SetReason(v[0]) // the upstream mesh's own refusal, relayed
		}
		err = u.h.fwd.Relay(w, r, resp)
		if gs < 0 && len(resp.Trailer) > 0 {
			gs = grpcStatus(resp.Trailer)
			eff = effectiveStatus(status, gs)
		}
		u.endTry(cancelTry, retrying, hst)
		switch {
		case err == proxy.ErrAborted:
			if r.Context().Err() != nil {
				return abandoned, true, nil // the client left; not the upstream's fault
			}
			svc.report(hst, outlier.LocalFailure)
			return failed, true, nil
		case err != nil: // a failed upgrade: nothing was written
			svc.report(hst, outlier.GatewayError)
			return failed, false, err
		}
		svc.report(hst, outlier.Classify(eff, false))
		if eff >= 500 {
			return failed, false, nil
		}
		return succeeded, false, nil
	}
}

// requestHash is the request's hash for a ring hash or Maglev cluster,
// from its route's hash_policy (hashed false: no hash policy, or none
// yielded a value, and the balancer picks at random, as Envoy's does). A
// cookie the policy generated is added to the response.
func requestHash(x *Exchange, set *endpointSet) (hash uint64, hashed bool) {
	rt := x.route
	if rt == nil || len(rt.HashPolicies) == 0 || !set.picker.Policy().Hashing() {
		return 0, false
	}
	h, ok, c := rt.Hash(x.R, x.R.RemoteAddr)
	if c != nil {
		x.W = &setCookieWriter{ResponseWriter: x.W, cookie: c.String()}
	}
	return h, ok
}

// setCookieWriter adds a Set-Cookie to the response as its head goes out
// (after the upstream's headers were copied in).
type setCookieWriter struct {
	http.ResponseWriter
	cookie string
	done   bool
}

func (w *setCookieWriter) WriteHeader(code int) {
	if !w.done {
		w.done = true
		w.Header().Add("Set-Cookie", w.cookie)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *setCookieWriter) Write(p []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *setCookieWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// tryContext returns the context of one try: ctx (the request's) ending
// at the earlier of the route deadline (zero: none) and the per-try
// timeout (zero: none) from now. It is one context per try, none per request, and
// a tryCtx, which costs no timer unless something waits on it. cancel is
// nil when there is no deadline.
func (u *upstream) tryContext(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc) {
	return tryContextFor(ctx, deadline, u.pol.perTry)
}

// tryContextFor is tryContext with a per-try timeout other than the
// service's (a route's retry policy).
func tryContextFor(ctx context.Context, deadline time.Time, perTry time.Duration) (context.Context, context.CancelFunc) {
	if perTry > 0 {
		if d := time.Now().Add(perTry); deadline.IsZero() || d.Before(deadline) {
			deadline = d
		}
	}
	if deadline.IsZero() {
		return ctx, nil
	}
	c := newTryCtx(ctx, deadline)
	return c, c.cancel
}

// expired says whether the route deadline (zero: none) has passed.
func expired(deadline time.Time) bool {
	return !deadline.IsZero() && !time.Now().Before(deadline)
}

// acquireRetry takes a slot of the retry budget for a retry the policy
// allows, counting the retries the budget refuses.
func (u *upstream) acquireRetry() bool {
	if u.svc.budget.Acquire(u.svc.limits.Requests.Active()) {
		return true
	}
	u.svc.m.RetryBudgetExhausted()
	return false
}

// countTimeout attaches the upstream's timeout metric to err when it is a
// route or per-try timeout the caller sees (504 upstream-timeout), so the
// edge counts it when it renders it.
func (s *service) countTimeout(err error) error {
	var pe *proxy.Error
	if errors.As(err, &pe) && pe.Reason == proxy.ReasonTimeout {
		return counted(err, s.m.Timeout)
	}
	return err
}

// endTry releases what one try held.
func (u *upstream) endTry(cancel context.CancelFunc, retrying bool, hst *host) {
	if hst != nil {
		hst.active.Add(-1)
	}
	if cancel != nil {
		cancel()
	}
	if retrying {
		u.svc.budget.Release()
	}
}

// failureOf maps a Send error to what the retry policy knows; gone means
// the caller went away.
func failureOf(err error) (f retry.Failure, gone bool) {
	var pe *proxy.Error
	if !errors.As(err, &pe) {
		return retry.Reset, false
	}
	switch pe.Reason {
	case proxy.ReasonConnectFailure:
		return retry.ConnectFailure, false
	case proxy.ReasonTimeout:
		return retry.Timeout, false
	case proxy.ReasonReset:
		return retry.Reset, false
	case proxy.ReasonClientCancelled:
		return retry.NoFailure, true
	}
	return retry.NoFailure, false
}

// timeoutOrGone is the answer when the request's context ended between
// tries: the route timeout, or the caller leaving.
func timeoutOrGone(r *http.Request) *proxy.Error {
	if r.Context().Err() != nil {
		return &proxy.Error{Status: proxy.StatusClientClosedRequest, Reason: proxy.ReasonClientCancelled}
	}
	return &proxy.Error{Status: http.StatusGatewayTimeout, Reason: proxy.ReasonTimeout}
}

func outcomeOf(r *http.Request) outcome {
	if r.Context().Err() != nil {
		return abandoned
	}
	return failed
}

// backoff waits before retry number n (Envoy's jittered exponential
// backoff, 25 ms base); false means ctx ended or the route deadline (zero:
// none) passed first, in which case it returns at that moment.
func backoff(ctx context.Context, deadline time.Time, n int) bool {
	d := retry.Backoff(n, 0, 0, rand.Uint64())
	routeEnds := false
	if !deadline.IsZero() {
		if left := time.Until(deadline); left <= d {
			d, routeEnds = left, true
		}
	}
	if d <= 0 {
		return !routeEnds && ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return !routeEnds
	}
}

// rateLimited says whether a response is a rate-limit refusal by a mesh
// (ours or Envoy's), for retry_on envoy-ratelimited.
func rateLimited(h http.Header) bool {
	if len(h["X-Envoy-Ratelimited"]) > 0 {
		return true
	}
	v := h["X-Mesh-Reason"]
	return len(v) > 0 && v[0] == proxy.ReasonRateLimited
}

// grpcStatus reads a grpc-status header or trailer, or returns
// retry.NoGRPCStatus.
func grpcStatus(h http.Header) int {
	v := h["Grpc-Status"]
	if len(v) == 0 || len(v[0]) == 0 || len(v[0]) > 2 {
		return retry.NoGRPCStatus
	}
	n := 0
	for _, c := range []byte(v[0]) {
		if c < '0' || c > '9' {
			return retry.NoGRPCStatus
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// grpcHTTP is Envoy's mapping of gRPC status codes to HTTP statuses
// (Grpc::Utility::grpcToHttpStatus), by which outlier detection and the
// breaker judge gRPC calls.
var grpcHTTP = [...]int{200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401}

// effectiveStatus is the HTTP status a response counts as: a gRPC
// response's grpc-status mapped as Envoy does, else its own status.
func effectiveStatus(status, grpc int) int {
	if status != http.StatusOK || grpc < 0 {
		return status
	}
	if grpc < len(grpcHTTP) {
		return grpcHTTP[grpc]
	}
	return 500
}

// maxReplay is the largest request body kept for a retry after it was
// sent (Envoy buffers up to its per-request buffer limit). Larger bodies
// are streamed and only retried when they were never sent.
const maxReplay = 64 << 10

// requestBody tracks whether a request's body can be sent again.
type requestBody struct {
	has   bool        // the request has a body
	rb    *replayBody // kept for replay, or nil
	spent bool        // a try may have read the (unkept) body
}

// next returns the body for the next try (nil: r.Body).
func (b *requestBody) next() io.Reader {
	if b.rb == nil {
		return nil
	}
	if b.rb.complete() {
		return bytes.NewReader(b.rb.buf)
	}
	return b.rb
}

// tried records a try that ended with f.
func (b *requestBody) tried(f retry.Failure) {
	if f != retry.ConnectFailure {
		b.spent = true // the transport may have read some of it
	}
}

// replayable says whether the body can go out again whole.
func (b *requestBody) replayable() bool {
	switch {
	case !b.has:
		return true
	case b.rb != nil:
		return b.rb.complete() || !b.spent
	}
	return !b.spent
}

// replayBody passes a request body through, keeping a copy of it as long
// as it is at most maxReplay bytes long. The transport reads it from its
// own goroutine; the tries read its state from the handler's.
type replayBody struct {
	src   io.Reader
	buf   []byte
	state atomic.Uint32 // reading, complete (EOF seen, all kept) or over the limit
}

const (
	replayReading = iota
	replayComplete
	replayOver
)

func newReplayBody(src io.Reader, contentLength int64) *replayBody {
	b := &replayBody{src: src}
	if contentLength > 0 {
		b.buf = make([]byte, 0, contentLength)
	}
	return b
}

func (b *replayBody) Read(p []byte) (int, error) {
	n, err := b.src.Read(p)
	if b.state.Load() == replayReading {
		if n > 0 {
			if len(b.buf)+n > maxReplay {
				b.buf = nil
				b.state.Store(replayOver)
			} else {
				b.buf = append(b.buf, p[:n]...)
			}
		}
		if err == io.EOF && b.state.Load() == replayReading {
			b.state.Store(replayComplete)
		}
	}
	return n, err
}

func (b *replayBody) complete() bool { return b.state.Load() == replayComplete }
