// Package retry decides whether a failed attempt may be tried again, with
// the semantics of Envoy's route retry_policy: the retry_on conditions
// (x-envoy-retry-on and x-envoy-retry-grpc-on names) as pure functions of
// what the attempt returned, the retry budget that caps concurrent retries
// at a share of active requests, and Envoy's jittered exponential backoff.
package retry

import (
	"fmt"
	"strings"
	"time"
)

// On is a set of retry_on conditions.
type On uint32

// The retry_on conditions, by their Envoy names.
const (
	On5xx                  On = 1 << iota // "5xx": any 5xx, or no response at all
	OnGatewayError                        // "gateway-error": 502, 503, 504, or no response at all
	OnReset                               // "reset": no response at all (disconnect, reset, timeout)
	OnConnectFailure                      // "connect-failure": the connection could not be made
	OnRetriable4xx                        // "retriable-4xx": 409
	OnRefusedStream                       // "refused-stream": HTTP/2 REFUSED_STREAM
	OnRetriableStatusCodes                // "retriable-status-codes": Policy.StatusCodes
	OnRetriableHeaders                    // "retriable-headers": accepted, never matches (no header matchers here)
	OnEnvoyRateLimited                    // "envoy-ratelimited": the response says the mesh rate-limited it
	OnCancelled                           // gRPC "cancelled" (1)
	OnDeadlineExceeded                    // gRPC "deadline-exceeded" (4)
	OnResourceExhausted                   // gRPC "resource-exhausted" (8)
	OnInternal                            // gRPC "internal" (13)
	OnUnavailable                         // gRPC "unavailable" (14)
)

var names = []struct {
	name string
	on   On
}{
	{"5xx", On5xx},
	{"gateway-error", OnGatewayError},
	{"reset", OnReset},
	{"connect-failure", OnConnectFailure},
	{"retriable-4xx", OnRetriable4xx},
	{"refused-stream", OnRefusedStream},
	{"retriable-status-codes", OnRetriableStatusCodes},
	{"retriable-headers", OnRetriableHeaders},
	{"envoy-ratelimited", OnEnvoyRateLimited},
	{"cancelled", OnCancelled},
	{"deadline-exceeded", OnDeadlineExceeded},
	{"resource-exhausted", OnResourceExhausted},
	{"internal", OnInternal},
	{"unavailable", OnUnavailable},
}

// Parse reads retry_on names. Each entry may itself be a comma-separated
// list, as in the x-envoy-retry-on header.
func Parse(entries []string) (On, error) {
	var on On
	for _, e := range entries {
		for name := range strings.SplitSeq(e, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			found := false
			for _, n := range names {
				if n.name == name {
					on |= n.on
					found = true
					break
				}
			}
			if !found {
				return 0, fmt.Errorf("parse retry_on: unknown condition %q", name)
			}
		}
	}
	return on, nil
}

// String lists the conditions by name, comma-separated.
func (on On) String() string {
	var b strings.Builder
	for _, n := range names {
		if on&n.on != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}

// Failure is why an attempt got no response.
type Failure uint8

const (
	// NoFailure: the attempt got a response (look at its status).
	NoFailure Failure = iota
	// ConnectFailure: no connection could be made (refused, connect timeout).
	ConnectFailure
	// Reset: the connection or stream broke before a response came.
	Reset
	// RefusedStream: the HTTP/2 peer refused the stream (REFUSED_STREAM);
	// the request was not processed.
	RefusedStream
	// Timeout: the per-try timeout fired before a response came.
	Timeout
)

// NoGRPCStatus is the GRPCStatus of an attempt whose response carried no
// grpc-status.
const NoGRPCStatus = -1

// Attempt is what one try returned.
type Attempt struct {
	// Status is the HTTP status, or 0 when Failure is set.
	Status int
	// GRPCStatus is the grpc-status of a response that carried one
	// (headers or trailers-only), else NoGRPCStatus.
	GRPCStatus int
	Failure    Failure
	// RateLimited is set when the response says the mesh refused it for
	// a rate limit (x-envoy-ratelimited, or the mesh's own 429 reason).
	RateLimited bool
}

// Policy is the retry_on part of a route retry policy.
type Policy struct {
	On On
	// StatusCodes are the retriable_status_codes for "retriable-status-codes".
	StatusCodes []int
}

// Retriable says whether the attempt may be retried under p. It is a pure
// function of its arguments and never allocates.
func (p *Policy) Retriable(a Attempt) bool {
	on := p.On
	if a.Failure != NoFailure {
		// As in Envoy, 5xx and gateway-error count a missing response as a
		// gateway failure, and reset covers every kind of missing response.
		if on&(On5xx|OnGatewayError|OnReset) != 0 {
			return true
		}
		return a.Failure == ConnectFailure && on&OnConnectFailure != 0 ||
			a.Failure == RefusedStream && on&OnRefusedStream != 0
	}
	s := a.Status
	switch {
	case on&On5xx != 0 && s >= 500 && s <= 599:
		return true
	case on&OnGatewayError != 0 && (s == 502 || s == 503 || s == 504):
		return true
	case on&OnRetriable4xx != 0 && s == 409:
		return true
	case on&OnEnvoyRateLimited != 0 && a.RateLimited:
		return true
	}
	if on&OnRetriableStatusCodes != 0 {
		for _, c := range p.StatusCodes {
			if c == s {
				return true
			}
		}
	}
	switch a.GRPCStatus {
	case 1:
		return on&OnCancelled != 0
	case 4:
		return on&OnDeadlineExceeded != 0
	case 8:
		return on&OnResourceExhausted != 0
	case 13:
		return on&OnInternal != 0
	case 14:
		return on&OnUnavailable != 0
	}
	return false
}

// Envoy's default backoff: 25ms base, ten times that at most.
const (
	DefaultBaseInterval = 25 * time.Millisecond
	DefaultMaxInterval  = 10 * DefaultBaseInterval
)

// Backoff is Envoy's fully jittered exponential backoff: before retry
// number n (1 for the first retry) wait a uniformly random time in
// [0, (2^n − 1) × base), capped at maxInterval. random is any uniformly
// distributed number (e.g. math/rand/v2's Uint64); zero base or max mean
// the defaults.
func Backoff(n int, base, maxInterval time.Duration, random uint64) time.Duration {
	if base <= 0 {
		base = DefaultBaseInterval
	}
	if maxInterval <= 0 {
		maxInterval = 10 * base
	}
	n = min(max(n, 1), 32)
	limit := min(base*time.Duration(uint64(1)<<n-1), maxInterval)
	if limit <= 0 { // overflow
		limit = maxInterval
	}
	return time.Duration(random % uint64(limit))
}
