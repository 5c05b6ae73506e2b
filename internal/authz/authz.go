package authz

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// TrustDomain is the trust domain of every identity in the mesh.
const TrustDomain = "cluster.local"

// Identity is a workload's identity: its namespace and service account.
type Identity struct {
	Namespace      string
	ServiceAccount string
}

// IdentityOf returns the identity of w. A workload without a service
// account runs as "default", as a Kubernetes pod does.
func IdentityOf(w *model.Workload) Identity {
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return Identity{Namespace: w.Namespace, ServiceAccount: sa}
}

// FromSPIFFE is the identity a certificate proved (a tunnelled
// connection's peer), for Conn.Identity; nil, so no principal, for a trust
// domain other than the one policies name.
func FromSPIFFE(id identity.Identity) *Identity {
	if id.TrustDomain != TrustDomain {
		return nil
	}
	return &Identity{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount}
}

// Principal is the identity as policies name it: the SPIFFE id without
// spiffe://, cluster.local/ns/<namespace>/sa/<service account>.
func (i Identity) Principal() string {
	return TrustDomain + "/ns/" + i.Namespace + "/sa/" + i.ServiceAccount
}

// String is the SPIFFE id.
func (i Identity) String() string { return "spiffe://" + i.Principal() }

// Hash is the 64-bit name of the identity in the BPF maps: FNV-1a of the
// principal, never 0 (which means "no identity"). Two identities of one
// mesh with the same hash are refused by the dataplane.
func (i Identity) Hash() uint64 {
	h := fnv.New64a()
	h.Write([]byte(i.Principal()))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

// Conn is a connection as policies see it. Addresses are unmapped: an
// IPv4-mapped IPv6 address is the IPv4 address.
type Conn struct {
	Src netip.Addr
	Dst netip.AddrPort
	// Identity of the source; nil when the mesh does not know it.
	Identity *Identity
}

func (c Conn) String() string {
	id := "unknown"
	if c.Identity != nil {
		id = c.Identity.String()
	}
	return fmt.Sprintf("%s(%s)->%s", c.Src, id, c.Dst)
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allowed bool
	// Policy is the key of the policy that decided: the DENY policy that
	// matched, or the ALLOW policy that matched. Empty when no policy
	// decided: none applied, or ALLOW policies applied and none matched.
	Policy string
	// Reason says why, in a short sentence.
	Reason string
	// Counted are the AUDIT and dry-run policies that matched, in
	// evaluation order; they changed nothing.
	Counted []string
}

// Enforced reports whether p can allow or deny: not AUDIT, not a dry run.
func Enforced(p *model.Policy) bool { return !p.DryRun && p.Action != model.ActionAudit }

// Evaluate decides conn against the policies that apply to its
// destination, given in evaluation order (see [Index.Applicable]).
func Evaluate(policies []*model.Policy, conn Conn) Decision {
	var d Decision
	for _, p := range policies {
		if !Enforced(p) && Matches(p, conn) {
			d.Counted = append(d.Counted, p.Key())
		}
	}
	for _, p := range policies {
		if Enforced(p) && p.Action == model.ActionDeny && Matches(p, conn) {
			d.Policy = p.Key()
			d.Reason = "denied by DENY policy " + p.Key()
			return d
		}
	}
	allows := 0
	for _, p := range policies {
		if !Enforced(p) || p.Action != model.ActionAllow {
			continue
		}
		allows++
		if Matches(p, conn) {
			d.Allowed, d.Policy = true, p.Key()
			d.Reason = "allowed by ALLOW policy " + p.Key()
			return d
		}
	}
	if allows == 0 {
		d.Allowed = true
		d.Reason = "allowed: no ALLOW policy applies"
		return d
	}
	d.Reason = fmt.Sprintf("denied: none of the %d ALLOW policies that apply matches", allows)
	return d
}

// Matches reports whether the policy matches conn.
func Matches(p *model.Policy, conn Conn) bool {
	for i := range p.Rules {
		if RuleMatches(p, &p.Rules[i], conn) {
			return true
		}
	}
	return false
}

// RuleCanMatch reports whether a rule of p can match at L4 at all: a rule
// that needs L7 attributes cannot, except in a DENY policy (see the package
// doc).
func RuleCanMatch(p *model.Policy, r *model.PolicyRule) bool {
	return len(r.L7) == 0 || p.Action == model.ActionDeny
}

// RuleMatches reports whether rule r of policy p matches conn.
func RuleMatches(p *model.Policy, r *model.PolicyRule, conn Conn) bool {
	if !RuleCanMatch(p, r) {
		return false
	}
	for _, c := range r.Clauses {
		if len(c.Matches) == 0 {
			continue
		}
		if !slices.ContainsFunc(c.Matches, func(m model.PolicyMatch) bool { return MatchMatches(&m, conn) }) {
			return false
		}
	}
	return true
}

// MatchMatches reports whether one match matches conn. A match with no
// fields matches nothing.
func MatchMatches(m *model.PolicyMatch, conn Conn) bool {
	if Empty(m) {
		return false
	}
	return IdentityMatches(m, conn.Identity) &&
		PrefixesMatch(m.SourceIPs, m.NotSourceIPs, conn.Src) &&
		PrefixesMatch(m.DestinationIPs, m.NotDestinationIPs, conn.Dst.Addr()) &&
		PortMatches(m, conn.Dst.Port())
}

// Empty reports whether m sets no field.
func Empty(m *model.PolicyMatch) bool {
	return !HasIdentity(m) && len(m.SourceIPs)+len(m.NotSourceIPs)+len(m.DestinationIPs)+
		len(m.NotDestinationIPs)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// HasIdentity reports whether m sets a field about the source's identity.
func HasIdentity(m *model.PolicyMatch) bool {
	return len(m.Principals)+len(m.NotPrincipals)+len(m.Namespaces)+len(m.NotNamespaces)+
		len(m.ServiceAccounts)+len(m.NotServiceAccounts) > 0
}

// IdentityMatches reports whether the identity fields of m (principals,
// namespaces, service accounts and their not_ forms) match id; nil is a
// source without identity. True when m sets none of them.
func IdentityMatches(m *model.PolicyMatch, id *Identity) bool {
	ns := ""
	if id != nil {
		ns = id.Namespace
	}
	// ztunnel compares a principal only when the source has an identity,
	// and a namespace always, "" for none.
	principal := func(s model.StringMatch) bool { return id != nil && stringMatches(s, id.Principal()) }
	namespace := func(s model.StringMatch) bool { return stringMatches(s, ns) }
	sa := func(s model.ServiceAccountMatch) bool {
		return id != nil && s.Namespace == id.Namespace && s.Name == id.ServiceAccount
	}
	return both(m.Principals, m.NotPrincipals, principal) &&
		both(m.Namespaces, m.NotNamespaces, namespace) &&
		both(m.ServiceAccounts, m.NotServiceAccounts, sa)
}

// both is ztunnel's matches_internal: any of positive (if set) and none of
// negative.
func both[T any](positive, negative []T, f func(T) bool) bool {
	if len(positive) > 0 && !slices.ContainsFunc(positive, f) {
		return false
	}
	return !slices.ContainsFunc(negative, f)
}

// stringMatches compares as ztunnel's StringMatch; presence wants a
// non-empty value.
func stringMatches(s model.StringMatch, v string) bool {
	switch s.Kind {
	case model.MatchExact:
		return v == s.Value
	case model.MatchPrefix:
		return strings.HasPrefix(v, s.Value)
	case model.MatchSuffix:
		return strings.HasSuffix(v, s.Value)
	case model.MatchPresence:
		return v != ""
	}
	return false
}

// PrefixesMatch reports whether a is in one of positive (when set) and in
// none of negative. Prefixes and address of different families never
// contain each other; a is unmapped first.
func PrefixesMatch(positive, negative []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	in := func(p netip.Prefix) bool { return p.Contains(a) }
	if len(positive) > 0 && !slices.ContainsFunc(positive, in) {
		return false
	}
	return !slices.ContainsFunc(negative, in)
}

// PortMatches reports whether the destination port fields of m match port.
func PortMatches(m *model.PolicyMatch, port uint16) bool {
	if len(m.DestinationPorts) > 0 && !slices.Contains(m.DestinationPorts, port) {
		return false
	}
	return !slices.Contains(m.NotDestinationPorts, port)
}
