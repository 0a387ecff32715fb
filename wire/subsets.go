package wire

import "strings"

// SubsetSeparator joins a service and one of its subsets in a cluster
// name: the subset v2 of orders is the cluster (and load assignment)
// "orders/v2". Service names cannot contain '/', so a cluster name with
// one always names a subset.
const SubsetSeparator = "/"

// SubsetCluster is the name of the cluster, and of its load assignment,
// holding the instances of service's subset.
func SubsetCluster(service, subset string) string {
	return service + SubsetSeparator + subset
}

// SplitCluster splits a cluster name into its service and subset; subset
// is "" for a service's own cluster.
func SplitCluster(cluster string) (service, subset string) {
	service, subset, _ = strings.Cut(cluster, SubsetSeparator)
	return service, subset
}

// ServiceRoute is the name of a service's own RouteConfiguration (one
// virtual host for the service's domains, its routes in order, then the
// catch-all): what gRPC proxyless clients get, and what an agent
// subscribed to the service gets.
func ServiceRoute(service string) string { return service }
