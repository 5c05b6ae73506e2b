package model

import (
	"fmt"
	"net/netip"
)

// PolicyScope says which workloads a policy applies to.
type PolicyScope string

const (
	// ScopeGlobal applies the policy to every workload of the mesh.
	ScopeGlobal PolicyScope = "global"
	// ScopeNamespace applies the policy to the workloads of its namespace.
	ScopeNamespace PolicyScope = "namespace"
	// ScopeWorkloadSelector applies the policy to the workloads that name
	// it in [Workload.Policies].
	ScopeWorkloadSelector PolicyScope = "workload_selector"
)

// PolicyAction is what happens to a connection a policy matches.
type PolicyAction string

const (
	// ActionAllow allows matching connections. Once any allow policy
	// applies to a workload, connections to it that no allow policy
	// matches are denied.
	ActionAllow PolicyAction = "allow"
	// ActionDeny denies matching connections; deny wins over allow.
	ActionDeny PolicyAction = "deny"
	// ActionAudit neither allows nor denies: connections it matches are
	// counted, nothing else. (Istio's AUDIT action; ztunnel has none.)
	ActionAudit PolicyAction = "audit"
)

// MatchKind is how a [StringMatch] compares.
type MatchKind string

const (
	MatchExact    MatchKind = "exact"
	MatchPrefix   MatchKind = "prefix"
	MatchSuffix   MatchKind = "suffix"
	MatchPresence MatchKind = "presence" // any non-empty value
)

// Policy is an L4 authorization policy, shaped like Istio's
// istio.security.Authorization, which the xDS source translates field by
// field. A connection matches the policy when any of its rules matches.
type Policy struct {
	Name      string
	Namespace string
	Scope     PolicyScope
	Action    PolicyAction
	// DryRun policies are evaluated and logged, never enforced.
	DryRun bool
	// Rules are OR-ed (Istio's groups). A policy with no rules matches no
	// connection, so an allow policy without rules denies everything.
	Rules []PolicyRule
}

// Key is the policy's unique name in the mesh: namespace/name.
func (p *Policy) Key() string { return p.Namespace + "/" + p.Name }

// PolicyRule matches when every one of its clauses matches (AND; Istio's
// rules within a group). A rule with no clauses matches every connection.
type PolicyRule struct {
	Clauses []PolicyClause
	// L7 names the attributes of the rule that only an L7 proxy can check
	// (to[0].operation.methods, when[1] request.headers[x-user], ...),
	// which the source left out of Clauses. As istiod does for ztunnel,
	// an allow rule with L7 attributes never matches; a deny rule matches
	// on its L4 clauses alone, so it denies more rather than less. The xDS
	// source never sets it: istiod has already applied that rule.
	L7 []string
}

// PolicyClause matches when any of its matches matches (OR). A clause with
// no matches matches every connection; a match with no fields matches none
// (ztunnel's reading of the same structure).
type PolicyClause struct {
	Matches []PolicyMatch
}

// PolicyMatch matches a connection when every non-empty field matches
// (AND). A field matches when any of its values does (OR); a Not field
// matches when none of its values does. Principals are SPIFFE ids without
// the spiffe:// scheme (cluster.local/ns/default/sa/client), as Istio
// sends them.
type PolicyMatch struct {
	Principals          []StringMatch
	NotPrincipals       []StringMatch
	Namespaces          []StringMatch
	NotNamespaces       []StringMatch
	ServiceAccounts     []ServiceAccountMatch
	NotServiceAccounts  []ServiceAccountMatch
	SourceIPs           []netip.Prefix
	NotSourceIPs        []netip.Prefix
	DestinationIPs      []netip.Prefix
	NotDestinationIPs   []netip.Prefix
	DestinationPorts    []uint16
	NotDestinationPorts []uint16
}

// StringMatch compares a string with Value by Kind; Value is empty for
// [MatchPresence].
type StringMatch struct {
	Kind  MatchKind
	Value string
}

// ServiceAccountMatch matches the identity of a service account.
type ServiceAccountMatch struct {
	Namespace string
	Name      string
}

// validatePolicies checks the policies and the workloads' references to
// them; Validate calls it after the services and workloads.
func (m *Mesh) validatePolicies() error {
	policies := make(map[string]bool, len(m.Policies))
	for i := range m.Policies {
		p := &m.Policies[i]
		if p.Name == "" {
			return fmt.Errorf("policy %d: name is empty", i)
		}
		if policies[p.Key()] {
			return fmt.Errorf("policy %s: defined twice", p.Key())
		}
		policies[p.Key()] = true
		switch p.Scope {
		case ScopeGlobal:
		case ScopeNamespace, ScopeWorkloadSelector:
			if p.Namespace == "" {
				return fmt.Errorf("policy %s: scope %s needs a namespace", p.Key(), p.Scope)
			}
		default:
			return fmt.Errorf("policy %s: unknown scope %q", p.Key(), p.Scope)
		}
		if p.Action != ActionAllow && p.Action != ActionDeny && p.Action != ActionAudit {
			return fmt.Errorf("policy %s: unknown action %q", p.Key(), p.Action)
		}
		for r, rule := range p.Rules {
			for _, attr := range rule.L7 {
				if attr == "" {
					return fmt.Errorf("policy %s: rule %d: empty L7 attribute name", p.Key(), r)
				}
			}
			for c, clause := range rule.Clauses {
				for n := range clause.Matches {
					if err := clause.Matches[n].validate(); err != nil {
						return fmt.Errorf("policy %s: rule %d: clause %d: match %d: %w", p.Key(), r, c, n, err)
					}
				}
			}
		}
	}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		for _, key := range w.Policies {
			if !policies[key] {
				return fmt.Errorf("workload %s: policy %s does not exist", w.Key(), key)
			}
		}
	}
	return nil
}

func (pm *PolicyMatch) validate() error {
	for _, ss := range [][]StringMatch{pm.Principals, pm.NotPrincipals, pm.Namespaces, pm.NotNamespaces} {
		for _, s := range ss {
			switch s.Kind {
			case MatchExact, MatchPrefix, MatchSuffix:
			case MatchPresence:
				if s.Value != "" {
					return fmt.Errorf("presence match with value %q", s.Value)
				}
			default:
				return fmt.Errorf("unknown string match kind %q", s.Kind)
			}
		}
	}
	for _, sas := range [][]ServiceAccountMatch{pm.ServiceAccounts, pm.NotServiceAccounts} {
		for _, sa := range sas {
			if sa.Name == "" {
				return fmt.Errorf("service account match in namespace %q without a name", sa.Namespace)
			}
		}
	}
	for _, ps := range [][]netip.Prefix{pm.SourceIPs, pm.NotSourceIPs, pm.DestinationIPs, pm.NotDestinationIPs} {
		for _, p := range ps {
			if !p.IsValid() || p.Addr().Zone() != "" || p != p.Masked() {
				return fmt.Errorf("invalid address block %q", p)
			}
		}
	}
	for _, ports := range [][]uint16{pm.DestinationPorts, pm.NotDestinationPorts} {
		for _, port := range ports {
			if port == 0 {
				return fmt.Errorf("port 0")
			}
		}
	}
	return nil
}
