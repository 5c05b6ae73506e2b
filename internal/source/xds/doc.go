// Package xds reads the mesh from an xDS control plane: istiod, or any
// server built on go-control-plane. A [Client] follows one gRPC stream,
// keeps the resources it accepted, and hands a whole new [model.Mesh] to
// its apply function after every change, as the file source does.
//
// # Two APIs
//
// [NewWorkloadClient] speaks Istio ambient's workload API, as ztunnel does:
// delta xDS (DeltaAggregatedResources) for [AddressType] and
// [AuthorizationType], with a wildcard subscription and a ztunnel node id
// (ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local, metadata NAME,
// NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID). Each type has one
// handler that converts its resources one by one:
//
//   - istio.workload.Service: name and namespace name the model service;
//     addresses and ports (service_port -> target_port) become its
//     frontends. Load balancing is random: locality preferences (STRICT,
//     FAILOVER) are not supported yet and are logged; PASSTHROUGH
//     services, headless services (no address) and services without
//     ports are not balanced. A service with a waypoint (by address: a
//     service VIP or a workload address; or by namespace/hostname) is
//     balanced over the waypoint's instances on its own ports, never over
//     its own endpoints; while the waypoint is unknown or has no instance
//     taking traffic the service has no endpoint, so connects are refused
//     (model.ServiceWaypoint says why). [NewWaypointClient], the client
//     of the waypoint itself, balances such a service over its own
//     endpoints instead (the waypoint is the one that reaches them) and
//     takes full builds only. Responses that touch such a
//     service, a waypoint or their workloads take the full build.
//     A workload's own waypoint field is not served (nothing carries
//     traffic to a pod address through a waypoint): the full build gives
//     the workload a deny policy, kmesh-system/waypoint-not-served-<ns>.<name>,
//     that spares only the waypoint's instances, and sets model.Workload's
//     Waypoint (workload_waypoint.go).
//   - istio.workload.Workload: uid, name, namespace, addresses, node,
//     network, service account, locality, capacity (as weight, capped at
//     model.MaxWeight) and selector policies become a model workload. Its
//     services map (namespace/hostname -> ports) makes it an endpoint of
//     those services, unless it is unhealthy (or the service allows
//     unhealthy endpoints) or has capacity 0. A workload's own target port
//     overrides the service's; the data plane has one target port per
//     service port, so an endpoint that disagrees is left out and logged.
//     Workload.Netns stays empty: xDS does not enroll anything.
//   - istio.security.Authorization becomes a model.Policy.
//
// Resources may arrive in any order: a workload naming a service that has
// not arrived is kept and joins it when it does.
//
// [NewADSClient] speaks classic ADS (state of the world, sidecar node id)
// for clusters, endpoints and listeners. A listener bound to one address
// and port whose single filter chain ends in a tcp_proxy to one cluster
// (or an http_connection_manager whose inline routes all go to one
// cluster) makes that cluster a service: named after the cluster, on the
// listener's address and port, balancing over one workload per endpoint
// of the cluster's EDS load assignment (or a static cluster's inline
// one). All endpoints of a cluster must share a port, the target port.
// Endpoint weights are capped at model.MaxWeight; unhealthy, draining and
// timed-out endpoints are left out, and only the lowest priority with
// endpoints is used. Listeners bound to 0.0.0.0 or ::, DNS and
// original-destination clusters, RDS routes and several filter chains are
// valid config the data plane cannot serve: they are skipped, not
// rejected.
//
// # ACK and NACK
//
// A response is ACKed when every resource in it is accepted. A resource
// that cannot be used (undecodable, a bad address, a port out of range, a
// malformed reference) is rejected alone: the response is NACKed with a
// message naming each rejected resource and why,
//
//	resource default/hello: address 0: 5 bytes is not an IPv4 or IPv6 address
//
// the rejected resource keeps its previous version, and the rest of the
// response is applied. A resource that clashes with an older one (the same
// service address and port, the same workload or service name) is left out
// of the mesh and named in the NACK; it joins once the clash is gone. If
// apply fails (the data plane is full, say), the response is NACKed with
// that error and the store keeps its previous state. The client then
// restarts the stream (after the reconnect backoff), announcing only what
// it holds, so the control plane sends the refused change again and the
// apply is retried; the data plane keeps its last good state meanwhile.
//
// # Connection
//
// The client connects in plaintext, or with TLS when [Config.RootCertFile]
// is set; [Config.TokenFile] adds a bearer token, re-read at each
// connect. When the stream breaks, the client reconnects with exponential
// backoff and jitter (capped at 15 s). A delta stream resumes with
// initial_resource_versions for everything it holds, so the control plane
// sends only what changed; a state-of-the-world stream sends the versions
// it accepted last. While the control plane is away nothing is applied:
// the data plane keeps forwarding with the last good state.
//
// The first mesh is applied once every subscribed type has had its first
// response, so the daemon's readiness means "has the control plane's
// state", never part of it.
package xds
