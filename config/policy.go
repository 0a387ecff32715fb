package config

import (
	"fmt"
	"time"
)

// Policies are written once in the control plane's YAML and pushed to every
// agent as standard Envoy fields (see docs/configuration.md). A service's
// entry overrides the default field by field.
type Policies struct {
	Default  Policy            `mapstructure:"default" yaml:"default"`
	Services map[string]Policy `mapstructure:"services" yaml:"services"`
}

// For returns the effective policy of a service.
func (p Policies) For(service string) Policy {
	if sp, ok := p.Services[service]; ok {
		return sp
	}
	return p.Default
}

// Policy is the traffic policy of one service: caller-side (timeout,
// retries, breaker, outlier detection, load balancing) and callee-side
// (rate limit).
type Policy struct {
	// Timeout bounds a whole request including retries (route timeout);
	// zero means none.
	Timeout        time.Duration `mapstructure:"timeout" yaml:"timeout"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout" yaml:"connect_timeout"`

	Retries          Retries          `mapstructure:"retries" yaml:"retries"`
	CircuitBreaker   CircuitBreaker   `mapstructure:"circuit_breaker" yaml:"circuit_breaker"`
	OutlierDetection OutlierDetection `mapstructure:"outlier_detection" yaml:"outlier_detection"`
	LoadBalancer     LoadBalancer     `mapstructure:"load_balancer" yaml:"load_balancer"`
	RateLimit        RateLimit        `mapstructure:"rate_limit" yaml:"rate_limit"`
}

// Retries is Envoy's route retry policy plus a retry budget.
type Retries struct {
	// Attempts is the number of retries after the first try (num_retries).
	Attempts      int           `mapstructure:"attempts" yaml:"attempts"`
	PerTryTimeout time.Duration `mapstructure:"per_try_timeout" yaml:"per_try_timeout"`
	// RetryOn uses Envoy's x-envoy-retry-on / x-envoy-retry-grpc-on names.
	RetryOn []string `mapstructure:"retry_on" yaml:"retry_on"`
	// BudgetPercent caps retries at this share of active requests
	// (Envoy retry_budget.budget_percent).
	BudgetPercent float64 `mapstructure:"budget_percent" yaml:"budget_percent"`
	// MinRetryConcurrency always allows this many concurrent retries.
	MinRetryConcurrency int `mapstructure:"min_retry_concurrency" yaml:"min_retry_concurrency"`
}

// CircuitBreaker combines Envoy's concurrency thresholds with a
// hystrix-style error-percentage breaker.
type CircuitBreaker struct {
	MaxConnections     int `mapstructure:"max_connections" yaml:"max_connections"`
	MaxPendingRequests int `mapstructure:"max_pending_requests" yaml:"max_pending_requests"`
	MaxRequests        int `mapstructure:"max_requests" yaml:"max_requests"`
	// ErrorPercentThreshold opens the breaker when this share of requests
	// in the rolling window failed; zero disables the error breaker.
	ErrorPercentThreshold  int           `mapstructure:"error_percent_threshold" yaml:"error_percent_threshold"`
	RequestVolumeThreshold int           `mapstructure:"request_volume_threshold" yaml:"request_volume_threshold"`
	SleepWindow            time.Duration `mapstructure:"sleep_window" yaml:"sleep_window"`
}

// OutlierDetection is Envoy's passive health checking per endpoint.
type OutlierDetection struct {
	Consecutive5xx            int           `mapstructure:"consecutive_5xx" yaml:"consecutive_5xx"`
	ConsecutiveGatewayFailure int           `mapstructure:"consecutive_gateway_failure" yaml:"consecutive_gateway_failure"`
	Interval                  time.Duration `mapstructure:"interval" yaml:"interval"`
	BaseEjectionTime          time.Duration `mapstructure:"base_ejection_time" yaml:"base_ejection_time"`
	MaxEjectionPercent        int           `mapstructure:"max_ejection_percent" yaml:"max_ejection_percent"`
}

// LoadBalancer picks endpoints.
type LoadBalancer struct {
	// Policy is round_robin, least_request, random, or a consistent hash
	// of Hash: ring_hash or maglev (traffic.go).
	Policy string `mapstructure:"policy" yaml:"policy"`
	// LocalityAware prefers endpoints in the caller's zone and spills over
	// when that zone is unhealthy.
	LocalityAware bool `mapstructure:"locality_aware" yaml:"locality_aware"`
	// Hash is what ring_hash and maglev hash (traffic.go).
	Hash HashKey `mapstructure:"hash" yaml:"hash,omitempty"`
	// RingSize is ring_hash's minimum ring size (0: 1024).
	RingSize int `mapstructure:"ring_size" yaml:"ring_size,omitempty"`
}

// RateLimit is Envoy's local_ratelimit token bucket on the callee's
// inbound side; MaxTokens zero disables it.
type RateLimit struct {
	MaxTokens     int           `mapstructure:"max_tokens" yaml:"max_tokens"`
	TokensPerFill int           `mapstructure:"tokens_per_fill" yaml:"tokens_per_fill"`
	FillInterval  time.Duration `mapstructure:"fill_interval" yaml:"fill_interval" min:"50ms"`
}

// DefaultPolicy is the policy of every service no one configured.
func DefaultPolicy() Policy {
	return Policy{
		Timeout:        15 * time.Second,
		ConnectTimeout: time.Second,
		Retries: Retries{
			Attempts:            2,
			RetryOn:             []string{"connect-failure", "refused-stream", "reset", "unavailable"},
			BudgetPercent:       20,
			MinRetryConcurrency: 3,
		},
		CircuitBreaker: CircuitBreaker{
			MaxConnections:         1024,
			MaxPendingRequests:     1024,
			MaxRequests:            1024,
			ErrorPercentThreshold:  50,
			RequestVolumeThreshold: 20,
			SleepWindow:            5 * time.Second,
		},
		OutlierDetection: OutlierDetection{
			Consecutive5xx:            5,
			ConsecutiveGatewayFailure: 5,
			Interval:                  10 * time.Second,
			BaseEjectionTime:          30 * time.Second,
			MaxEjectionPercent:        50,
		},
		LoadBalancer: LoadBalancer{Policy: "round_robin", LocalityAware: true},
	}
}

var retryOnNames = []string{
	"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
	"retriable-status-codes", "retriable-headers", "envoy-ratelimited",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

func (p *Policy) validate(v *validator, path string) {
	v.nonNegative(path+".timeout", p.Timeout)
	v.positive(path+".connect_timeout", p.ConnectTimeout)
	r := p.Retries
	v.check(path+".retries.attempts", r.Attempts >= 0 && r.Attempts <= 10, "must be between 0 and 10, got %d", r.Attempts)
	v.nonNegative(path+".retries.per_try_timeout", r.PerTryTimeout)
	for i, on := range r.RetryOn {
		v.oneOf(fmt.Sprintf("%s.retries.retry_on[%d]", path, i), on, retryOnNames...)
	}
	v.check(path+".retries.budget_percent", r.BudgetPercent >= 0 && r.BudgetPercent <= 100, "must be between 0 and 100, got %g", r.BudgetPercent)
	v.notNegative(path+".retries.min_retry_concurrency", r.MinRetryConcurrency)
	cb := p.CircuitBreaker
	v.notNegative(path+".circuit_breaker.max_connections", cb.MaxConnections)
	v.notNegative(path+".circuit_breaker.max_pending_requests", cb.MaxPendingRequests)
	v.notNegative(path+".circuit_breaker.max_requests", cb.MaxRequests)
	v.check(path+".circuit_breaker.error_percent_threshold", cb.ErrorPercentThreshold >= 0 && cb.ErrorPercentThreshold <= 100, "must be between 0 and 100, got %d", cb.ErrorPercentThreshold)
	v.notNegative(path+".circuit_breaker.request_volume_threshold", cb.RequestVolumeThreshold)
	if cb.ErrorPercentThreshold > 0 {
		v.positive(path+".circuit_breaker.sleep_window", cb.SleepWindow)
	}
	od := p.OutlierDetection
	v.notNegative(path+".outlier_detection.consecutive_5xx", od.Consecutive5xx)
	v.notNegative(path+".outlier_detection.consecutive_gateway_failure", od.ConsecutiveGatewayFailure)
	v.nonNegative(path+".outlier_detection.interval", od.Interval)
	v.nonNegative(path+".outlier_detection.base_ejection_time", od.BaseEjectionTime)
	v.check(path+".outlier_detection.max_ejection_percent", od.MaxEjectionPercent >= 0 && od.MaxEjectionPercent <= 100, "must be between 0 and 100, got %d", od.MaxEjectionPercent)
	v.oneOf(path+".load_balancer.policy", p.LoadBalancer.Policy, "round_robin", "least_request", "random", "ring_hash", "maglev")
	p.LoadBalancer.validateHash(v, path+".load_balancer")
	rl := p.RateLimit
	if rl.MaxTokens != 0 {
		v.check(path+".rate_limit.max_tokens", rl.MaxTokens > 0, "must not be negative, got %d", rl.MaxTokens)
		v.check(path+".rate_limit.tokens_per_fill", rl.TokensPerFill > 0, "must be more than 0 when max_tokens is set, got %d", rl.TokensPerFill)
		v.positive(path+".rate_limit.fill_interval", rl.FillInterval)
	}
}

func (p *Policies) validate(v *validator) {
	p.Default.validate(v, "policies.default")
	for name, sp := range p.Services {
		v.meshServiceName("policies.services."+name, name)
		sp.validate(v, "policies.services."+name)
	}
}
