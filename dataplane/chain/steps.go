package chain

// The order of the agent's request paths. Like CoreDNS's plugin.cfg, this
// list alone fixes which step runs before which; each step lives in its
// own file (step_<name>.go) with its config mapping and state. A new
// policy is one new file plus one line here (and its config schema and
// control-plane translation).
//
// Inbound (the agent's own service, before the app):
//
//	authorization → rate-limit → concurrency-limit → app
//
// Outbound (per upstream service, after routing by Host or the
// per-upstream listener):
//
//	route → endpoints → max-requests → circuit-breaker → fault → route-timeout → mirror → tries
//
// route (only for a service with traffic routes) matches the service's
// routes and hands the request to the rest of the path of the cluster it
// picks (the service, a subset of it, another service); the steps after
// it run for that cluster. fault and mirror are there only for the
// clusters that routes with a fault injection or a mirror policy send
// to; they read the request's route (Exchange.Route).
//
// tries picks an endpoint (load balancing, outlier ejection), applies
// max_pending and the per-try timeout, sends, and retries within the
// budget or relays the response.

// DefaultSteps returns the agent's step lists (a new copy each time).
func DefaultSteps() Steps {
	return Steps{
		Inbound: []InboundBuilder{
			{Name: "authorization", Build: buildAuthorization},
			{Name: "rate-limit", Build: buildRateLimit},
			{Name: "concurrency-limit", Build: buildInboundLimit},
			{Name: "app", Build: buildApp},
		},
		Outbound: []OutboundBuilder{
			{Name: "route", Build: buildRoute},
			{Name: "endpoints", Build: buildEndpoints},
			{Name: "max-requests", Build: buildMaxRequests},
			{Name: "circuit-breaker", Build: buildBreaker},
			{Name: "fault", Build: buildFault},
			{Name: "route-timeout", Build: buildRouteTimeout},
			{Name: "mirror", Build: buildMirror},
			{Name: "tries", Build: buildTries},
		},
	}
}
