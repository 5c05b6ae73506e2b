// Package kubewaypoint is kmesh-waypoint's Kubernetes config source: it
// watches the objects a waypoint is configured by (Services and Pods,
// Gateways of class kmesh-waypoint, GAMMA HTTPRoutes and GRPCRoutes, Istio
// VirtualServices and AuthorizationPolicies with targetRefs) through
// client-go dynamic informers, and writes its Gateway's status (addresses
// and conditions) so that istiod's ambient index takes the Gateway as a
// waypoint. With istiod, [WithIstiodEndpoints] joins what it builds with
// the endpoints and workloads of istiod's workload API.
//
// The objects are not decoded here: each one is rendered, as kubectl would
// show it, into a document of the mesh config file and parsed by the file
// source (internal/source/file), so a route from the API server is
// validated exactly as one in the file. An object the parser rejects is
// reported by kind and name, and its last accepted version (or nothing,
// if it never had one) takes its place, so one bad object neither stops
// the rest nor undoes what was working.
package kubewaypoint
