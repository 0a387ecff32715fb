// Package wire is the contract between mesh's roles: every name, key and
// value that `mesh agent` and `mesh control` must agree on, defined once.
// Neither role owns it and it imports nothing of mesh, so both roles (and
// the leaves between them, such as xdsclient) depend on it and never on
// each other.
//
// What it fixes:
//   - xDS resource names: the listeners, route configurations and clusters
//     an agent subscribes to and the control plane serves (resources.go);
//   - the Envoy extension names both sides write or look for: filters,
//     load-balancing policies, retry predicates, protocol options;
//   - filter-metadata namespaces and their keys: the error-percentage
//     breaker on a Cluster ("mesh.governance") and an endpoint's registry
//     and CMDB metadata ("mesh") (metadata.go);
//   - xDS Node metadata keys an agent sends and the control plane reads
//     (node.go);
//   - Consul service meta keys registration writes and the control
//     plane's Consul source (and dataplane/discovery) read back
//     (registration.go);
//   - app protocol names, carried in Consul meta and in a Cluster's
//     protocol options (protocol.go).
//
// The golden resources in testdata/ are one translation of a realistic
// model, written by controlplane/translate's golden test (go test
// ./controlplane/translate -update) and read by the agent's tests
// (dataplane/xdsconf): each role tests against the same bytes instead of
// importing the other. wiretest decodes them. The contract tests in this
// package check that the golden resources use the names defined here.
package wire
