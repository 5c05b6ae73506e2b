// Package authz decides whether the mesh's authorization policies allow a
// connection to a workload, with Istio's semantics as ztunnel implements
// them (istio/ztunnel src/rbac.rs and src/state.rs). It is the reference the
// eBPF code is tested against: internal/dataplane compiles the same policies
// into maps, and the same table of cases (authztest) runs through both.
//
// # Which policies apply
//
// To a destination workload apply the global policies (Istio's root
// namespace, istio-system, without a selector), the namespace policies of
// its namespace, and the workload-selector policies it lists
// ([model.Workload.Policies]). They are evaluated in that order, each group
// by key, so the policy named as the cause of a decision is the same in Go
// and in the kernel.
//
// # Evaluation
//
//   - If any applicable DENY policy matches, the connection is denied.
//   - Else, if no ALLOW policy applies, it is allowed.
//   - Else it is allowed if an ALLOW policy matches, and denied otherwise.
//
// AUDIT policies and dry-run policies (Istio's istio.io/dry-run annotation)
// never change the decision: when they match they are counted, nothing more.
// (ztunnel receives dry_run but does not look at it; we never enforce a
// dry-run policy.)
//
// A policy matches when any of its rules does; a rule when all its clauses
// do; a clause when any of its matches does; a match when every field it
// sets matches, a field when any of its values does and a not_ field when
// none does. As in ztunnel: a policy with no rules matches nothing (an
// ALLOW policy without rules denies everything it applies to), a rule with
// no clauses and a clause with no matches match everything, and a match
// with no fields matches nothing.
//
// # The source
//
// The source's identity is its SPIFFE id in the trust domain cluster.local,
// cluster.local/ns/<namespace>/sa/<service account>, taken from the
// workload the mesh knows at the source address (see [Identity]). A source
// the mesh does not know has no identity: principals, namespaces and
// service accounts never match it, and their not_ forms always do.
//
// Where the identity comes from:
//
//   - A connection through the HBONE tunnel: the peer's certificate
//     (its SPIFFE URI SAN, verified against the mesh's roots); the tunnel
//     calls Evaluate with it ([FromSPIFFE]) before it dials the
//     application. The kernel's destination check leaves these to it.
//   - Any other connection, when the mesh has a CA: the address, but only
//     for the workloads of the destination's own node, whose network
//     namespaces that node's kmeshd enrolled; from another node a plaintext
//     connection has no identity, whatever its address. This is how STRICT
//     PeerAuthentication works: it becomes a DENY policy on "no principal".
//   - Without a CA: the address, for every workload of the mesh; any
//     process that can send from a workload's address passes as that
//     workload.
//
// # L7 attributes
//
// Rules can name attributes only an L7 proxy sees: methods, paths, hosts,
// request principals, remote IP blocks, request conditions. istiod, when it
// sends policies to ztunnel, omits an ALLOW rule with any of them (it never
// matches, so the traffic is denied unless another ALLOW rule matches) and
// keeps a DENY rule without them (it denies more than asked, never less).
// The file source does the same and records what it left out in
// [model.PolicyRule.L7]; an ALLOW or AUDIT rule that has any never matches
// here. One difference: istiod turns a DENY match that had only L7
// attributes into an empty match, which ztunnel then skips, so such a DENY
// rule denies nothing there. Here the left-out attributes count as matched,
// so such a rule denies every connection its other clauses match: it fails
// closed, as istiod's own warning ("more restrictive than requested") says
// it should.
package authz
