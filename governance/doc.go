// Package governance is the home of the traffic-governance algorithms the
// agent applies to every request, with no HTTP in them, so that the agent
// and tests drive them directly and benchmarks measure them alone:
//
//   - ratelimit: Envoy local_ratelimit token bucket (callee side);
//   - breaker: hystrix-style circuit breaker and Envoy concurrency thresholds;
//   - outlier: Envoy outlier detection (passive health per endpoint);
//   - retry: retry_on conditions, retry budget, backoff;
//   - balancer: round robin, least request, random, locality-aware;
//   - registry: state kept by key across config pushes;
//   - clock: the injectable monotonic clock they read.
//
// The benchmarks in this directory put them together as the agent will, to
// measure what governance adds to one request.
package governance
