package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/mesh/wire"
)

// Reasons the mesh gives, in the x-mesh-reason header and the access log,
// when it answers a request itself.
const (
	ReasonConnectFailure    = "upstream-connect-failure"
	ReasonReset             = "upstream-reset"
	ReasonTimeout           = "upstream-timeout"
	ReasonNoRoute           = "no-route"
	ReasonNoHealthyEndpoint = "no-healthy-endpoint"
	ReasonClientCancelled   = "client-cancelled"
	ReasonUpgradeFailure    = "upgrade-failure"
	// ReasonConnectNotSupported refuses CONNECT tunnels (HTTPS_PROXY).
	ReasonConnectNotSupported = "connect-not-supported"
	// ReasonRateLimited: the callee's token bucket is empty (429). The
	// control plane asks Envoy for the same value (package wire).
	ReasonRateLimited = wire.ReasonRateLimited
	// ReasonCircuitOpen: the upstream service's breaker is open (503).
	ReasonCircuitOpen = "circuit-open"
	// ReasonOverflow: a concurrency threshold is reached (503).
	ReasonOverflow = "overflow"
	// ReasonProxyError: an error the mesh has no better name for (502).
	ReasonProxyError = "proxy-error"
	// ReasonBadRequest: the request's framing is malformed (400; the
	// connection is closed).
	ReasonBadRequest = "bad-request"
	// ReasonProtocolError: the upstream's response broke HTTP/1.1
	// framing (502).
	ReasonProtocolError = "upstream-protocol-error"
	// ReasonFaultInjected: a route's fault injection aborted the request
	// (its configured HTTP or gRPC status).
	ReasonFaultInjected = "fault-injected"
)

// StatusClientClosedRequest is the (non-standard, nginx) status recorded
// when the caller went away before the upstream answered.
const StatusClientClosedRequest = 499

// Error is a request the mesh answers itself: why, and with which status.
type Error struct {
	// Status is the HTTP status to answer with.
	Status int
	// Reason is the x-mesh-reason value, one of the Reason constants or
	// a policy's own (e.g. "rate-limited", "circuit-open").
	Reason string
	// Err is the underlying cause, if any.
	Err error
	// RetryAfter, if positive, is sent as a Retry-After header.
	RetryAfter time.Duration
	// Message, if set, tells the client more than the reason (in the body,
	// or grpc-message); it must not leak internals.
	Message string
	// GRPCStatus, when GRPCSet, is the gRPC status to answer with, as a
	// trailers-only response whatever the request (a fault injection's
	// grpc_status); otherwise gRPC calls get one derived from Status.
	GRPCStatus int
	GRPCSet    bool
}

func (e *Error) Error() string {
	msg := e.Reason
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Err != nil {
		return msg + ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether err is a failure that happened before the
// request reached the upstream, so it is safe to send it elsewhere.
func Retryable(err error) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Reason == ReasonConnectFailure
}

// gRPC status codes used when the mesh answers a gRPC call.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnavailable       = 14
)

// WriteError renders err as the response to r: the status, an
// x-mesh-reason header and a short text body; for gRPC requests an HTTP
// 200 with grpc-status and grpc-message (a trailers-only response), so
// gRPC clients see a proper status. Errors that are not *Error become
// 502 "proxy-error". It must be called before anything was written to w.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var pe *Error
	if !errors.As(err, &pe) {
		pe = &Error{Status: http.StatusBadGateway, Reason: ReasonProxyError, Err: err}
	}
	h := w.Header()
	h.Set("X-Mesh-Reason", pe.Reason)
	if pe.RetryAfter > 0 {
		secs := int64((pe.RetryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	if pe.GRPCSet || isGRPC(r) {
		code := grpcUnavailable
		switch pe.Status {
		case http.StatusGatewayTimeout:
			code = grpcDeadlineExceeded
		case http.StatusTooManyRequests:
			code = grpcResourceExhausted
		case http.StatusForbidden:
			code = grpcPermissionDenied
		case StatusClientClosedRequest:
			code = grpcCancelled
		}
		if pe.GRPCSet {
			code = pe.GRPCStatus
		}
		h.Del("Content-Length")
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(code))
		h.Set("Grpc-Message", grpcMessage(pe.clientMessage()))
		w.WriteHeader(http.StatusOK)
		return
	}
	body := pe.clientMessage() + "\n"
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(pe.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// clientMessage is what the client is told: "mesh: REASON[: MESSAGE]".
func (e *Error) clientMessage() string {
	if e.Message != "" {
		return "mesh: " + e.Reason + ": " + e.Message
	}
	return "mesh: " + e.Reason
}

// isGRPC reports whether r is a gRPC call (content-type application/grpc,
// application/grpc+proto, application/grpc-web...).
func isGRPC(r *http.Request) bool {
	ct := r.Header["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// grpcMessage percent-encodes s as the gRPC spec requires for grpc-message.
func grpcMessage(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
