// Package routematch is the one HTTP route matcher of mesh: it compiles a
// standard Envoy route.v3.RouteConfiguration (virtual hosts by domain,
// routes matched in order on path, method, headers and query parameters;
// cluster, weighted-cluster, redirect and direct-response actions with
// rewrites, header mutations, timeouts and retry policies) into an
// immutable Table, and matches requests against it with Envoy's
// semantics. The gateway serves its routes with it, and the agent's
// traffic management will; neither keeps a matcher of its own.
//
// Compile does all the work (regexes compiled, names canonicalised,
// unsupported fields refused with the virtual host and route they are
// in); Table.Match does no allocation for ordinary requests. A Table and
// its Routes are shared by every request and must not be modified.
package routematch
