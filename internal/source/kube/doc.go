// Package kube enrolls the pods of this node from the Kubernetes API, as
// Istio's CNI agent does for ztunnel: a [Source] watches the pods whose
// spec.nodeName is this node and the namespaces (client-go informers), and
// reports the network namespaces of the pods that belong in the mesh. It
// only enrolls: the mesh itself (services, endpoints) comes from istiod or
// another config source, except one setting istiod's workload API does
// not carry: [Source.WatchServiceAffinity] reports each Service's
// sessionAffinity, which the daemon puts on the xDS service of that name.
//
// # Which pods
//
// [Wants] decides, following Istio ambient's rule:
//
//   - a pod with hostNetwork is never enrolled: its namespace is the host's;
//   - a pod labelled istio.io/dataplane-mode=none opts out;
//   - a pod with a sidecar (annotation sidecar.istio.io/status) is left to
//     its sidecar;
//   - otherwise the pod is enrolled when it or its namespace is labelled
//     istio.io/dataplane-mode=ambient (or =kmesh);
//   - and only while it has an IP and has not finished (phase Succeeded or
//     Failed). A terminating pod stays enrolled until it is gone, so its
//     connections drain as they began.
//
// kmeshd needs to get, list and watch pods (of its node) and namespaces,
// and to patch pods.
//
// # Finding a pod's network namespace
//
// The API server knows a pod's IPs, not its namespace on the host, and no
// CNI plugin tells kmeshd. So [Resolver] looks for the IP: it lists the
// runtimes' named namespaces ([NamedNetnsDirs]: /var/run/netns, where CNI
// plugins, containerd, CRI-O and `ip netns` keep them, and Docker's) and
// then the namespaces of every process (/proc/PID/ns/net) that the host's
// user namespace owns (any user can make one inside a user namespace of
// their own and put a pod's IP in it: it is no evidence), skips kmeshd's
// own (the host's) and those already seen (same inode),
// opens a netlink socket inside each and lists its addresses. A scan
// indexes every namespace it reads; the other pods of a burst are looked
// up in that index and checked in their one namespace, with no new scan.
// A named path is preferred to a /proc one, which
// vanishes with its process. An IP found in two namespaces is ambiguous and
// not enrolled (error [ErrAmbiguous]); an IP found nowhere yet (the CNI
// plugin has not finished) is retried with backoff (error [ErrNotFound]).
//
// Results are cached per pod (UID and IPs): a cached path is reused while
// it still names the same namespace (same inode), so a steady node costs
// one stat per pod per change and no namespace switch. A pod whose sandbox
// was re-created gets a new namespace, its old path fails the check, and
// the next scan finds the new one.
//
// # What it writes
//
// An enrolled pod is annotated kmesh.net/redirection=enabled once its
// namespace has been reported; the annotation is removed when the pod
// leaves the mesh (label changed, namespace unlabelled). With Config.HBONE
// (the mesh has a CA) it also gets Istio's ambient.istio.io/redirection,
// which tells istiod that the pod takes HBONE on port 15008; it is removed
// only from pods that carry kmeshd's annotation too.
//
// # Combining with other sources
//
// Run calls its report function with the whole set of enrolled pods (each
// with its namespace path, name and IPs) after the first full list and
// after every change; the daemon unions their namespaces with those of
// other sources (the mesh file, --enroll-netns) and keeps one enroller
// equal to the union. It also tells connect() which workload each pod is:
// the workload named as the pod (namespace/name, istiod's naming), else the
// one with the pod's IPs, so policies are checked at the client too.
package kube
