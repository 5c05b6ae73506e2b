// Package file reads the mesh from a YAML file: [Parse] turns one file into a
// [model.Mesh], and a [Source] watches the file and hands every valid new
// version to the dataplane.
//
// # Format
//
// The file has three top-level lists; all may be absent, and an empty file is
// an empty mesh. Every key is checked: an unknown or repeated key is an
// error, as is a second YAML document in the file.
//
//	services:
//	- name: hello              # required, DNS label (RFC 1123)
//	  namespace: default       # DNS label, default "default"
//	  addresses: ["10.96.0.10", "fd00:96::10"]  # required, at least one; IPv4 or IPv6,
//	                           # not IPv4-mapped, no zone, not unspecified; no duplicates
//	  ports:                   # required, at least one; no port twice
//	  - port: 80               # required, 1..65535
//	    targetPort: 8080       # 1..65535, default port
//	    protocol: TCP          # TCP only, default TCP
//	  selector: {app: hello}   # endpoints: workloads in the same namespace whose
//	                           # labels include all of these; none if absent
//	  loadBalancing:
//	    mode: random           # random (default) or round_robin
//	workloads:
//	- name: hello-1            # required, DNS subdomain (RFC 1123)
//	  namespace: default       # DNS label, default "default"
//	  labels: {app: hello}     # optional
//	  addresses: ["10.1.1.11", "fd00:1:1::11"]  # at most one IPv4 and one IPv6;
//	                           # not IPv4-mapped, no zone, not unspecified
//	  node: node-a             # required, the node the workload runs on
//	  netns: /var/run/netns/hello-1  # optional absolute path of its network
//	                           # namespace, enrolled by the kmeshd of node
//	  weight: 1                # 1..128 (model.MaxWeight), default 1
//	  serviceAccount: hello    # DNS subdomain, default "default"; the identity
//	                           # cluster.local/ns/<namespace>/sa/<serviceAccount>
//	authorizationPolicies:     # Istio AuthorizationPolicy objects, as for kubectl
//	- apiVersion: security.istio.io/v1   # or security.istio.io/v1beta1
//	  kind: AuthorizationPolicy
//	  metadata: {name: allow-client, namespace: default}
//	  spec:
//	    selector: {matchLabels: {app: hello}}  # none: the whole namespace;
//	                           # in istio-system: the whole mesh
//	    action: ALLOW          # ALLOW (default), DENY or AUDIT
//	    rules:
//	    - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
//	      to: [{operation: {ports: ["8080"]}}]
//	peerAuthentications:       # Istio PeerAuthentication objects, as for kubectl
//	- apiVersion: security.istio.io/v1
//	  kind: PeerAuthentication
//	  metadata: {name: strict, namespace: istio-system}  # root: mesh-wide
//	  spec:
//	    selector: {matchLabels: {app: hello}}  # none: the whole namespace
//	    mtls: {mode: STRICT}   # UNSET, DISABLE, PERMISSIVE (default) or STRICT
//	    portLevelMtls: {9090: {mode: PERMISSIVE}}  # needs a selector
//
// Policies are translated as istiod translates them for ztunnel (see
// internal/authz for their meaning): attributes only an L7 proxy can check
// are left out and named in model.PolicyRule.L7. docs/config.md lists every
// field.
//
// A null value (`namespace:` or `namespace: ~`) is the same as leaving the key
// out. Scalars are taken as written, so an unquoted label value such as 1.10
// is the string "1.10". Selector values must not be empty.
//
// A service's address and port pair (10.96.0.10:80) belongs to one service
// only. When Parse is given this node's name, every workload on this node that
// names a netns must have that path existing, so a typo is caught when the file
// is loaded rather than when a connection fails.
//
// # Errors
//
// Parse reports every problem it finds, one per line, each naming the file,
// the line and the field:
//
//	examples/hello.yaml:12: services[0].ports[0].port: 70000 is out of range 1..65535
//
// # Reloading
//
// [Source.Run] watches the file's directory rather than the file, because
// editors replace a file by renaming a new one over it and Kubernetes updates
// a mounted ConfigMap by swapping a symlink; both leave a watch on the old
// file pointing at nothing. A file that fails to parse is logged and the
// previous state stays in force. Writers should replace the file atomically
// (write a temporary file in the same directory, then rename it): a file
// truncated mid-write may parse as a smaller, valid mesh.
package file
