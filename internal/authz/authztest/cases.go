// Package authztest is the table of authorization cases that both the Go
// evaluator (internal/authz) and the eBPF code (through the dataplane's maps
// and BPF_PROG_TEST_RUN) must decide alike.
package authztest

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Decisions a case can want.
const (
	Allow = "allow"
	Deny  = "deny"
	Pass  = "pass" // the destination is no workload of the mesh: not judged
)

// Case is one connection under one set of policies.
type Case struct {
	Name     string
	Policies []model.Policy
	// Select lists the workload-selector policies (keys) that apply to a
	// workload (namespace/name), as a source resolves their selectors.
	Select map[string][]string
	Src    string // source address
	Dst    string // destination address and port
	Want   string // Allow, Deny or Pass
	// Policy is the key of the policy that decided; "" when none did.
	Policy string
	// Counted are the AUDIT and dry-run policies that matched.
	Counted []string
}

// Addresses of the workloads in every case's mesh, and of one outsider.
const (
	Client4  = "10.1.1.10"
	Client6  = "fd00:1:1::10"
	Hello1_4 = "10.1.1.11"
	Hello1_6 = "fd00:1:1::11"
	Hello2_4 = "10.1.2.12"
	Hello2_6 = "fd00:1:2::12"
	Legacy4  = "10.2.0.30"
	Legacy6  = "fd00:2::30"
	DB4      = "10.2.0.31"
	Anon4    = "10.2.0.32" // prod/anon: no service account (so "default"), no IPv6
	Outside4 = "10.9.0.9"  // no workload of the mesh
	Outside6 = "fd00:9::9"
)

// Mesh returns the case's mesh: five workloads in two namespaces
// (default: client, hello-1, hello-2; prod: legacy, db, anon) and the
// case's policies.
func (c *Case) Mesh() *model.Mesh {
	w := func(ns, name, sa string, labels map[string]string, addrs ...string) model.Workload {
		wl := model.Workload{Name: name, Namespace: ns, ServiceAccount: sa, Labels: labels, Node: "node-a", Weight: 1}
		for _, a := range addrs {
			wl.Addresses = append(wl.Addresses, netip.MustParseAddr(a))
		}
		wl.Policies = c.Select[wl.Key()]
		return wl
	}
	return &model.Mesh{
		Workloads: []model.Workload{
			w("default", "client", "client", map[string]string{"app": "client"}, Client4, Client6),
			w("default", "hello-1", "hello", map[string]string{"app": "hello"}, Hello1_4, Hello1_6),
			w("default", "hello-2", "hello", map[string]string{"app": "hello"}, Hello2_4, Hello2_6),
			w("prod", "legacy", "legacy", nil, Legacy4, Legacy6),
			w("prod", "db", "db", nil, DB4),
			w("prod", "anon", "", nil, Anon4),
		},
		Policies: c.Policies,
	}
}

func pol(ns, name string, scope model.PolicyScope, action model.PolicyAction, rules ...model.PolicyRule) model.Policy {
	return model.Policy{Name: name, Namespace: ns, Scope: scope, Action: action, Rules: rules}
}

func allowNS(name string, rules ...model.PolicyRule) model.Policy {
	return pol("default", name, model.ScopeNamespace, model.ActionAllow, rules...)
}

func denyNS(name string, rules ...model.PolicyRule) model.Policy {
	return pol("default", name, model.ScopeNamespace, model.ActionDeny, rules...)
}

func rule(clauses ...model.PolicyClause) model.PolicyRule { return model.PolicyRule{Clauses: clauses} }

func anyOf(ms ...model.PolicyMatch) model.PolicyClause { return model.PolicyClause{Matches: ms} }

// one is a rule of one clause of one match.
func one(m model.PolicyMatch) model.PolicyRule { return rule(anyOf(m)) }

func exact(v string) model.StringMatch  { return model.StringMatch{Kind: model.MatchExact, Value: v} }
func prefix(v string) model.StringMatch { return model.StringMatch{Kind: model.MatchPrefix, Value: v} }
func suffix(v string) model.StringMatch { return model.StringMatch{Kind: model.MatchSuffix, Value: v} }

var presence = model.StringMatch{Kind: model.MatchPresence}

func principals(ss ...model.StringMatch) model.PolicyMatch { return model.PolicyMatch{Principals: ss} }

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

const (
	clientP  = "cluster.local/ns/default/sa/client"
	legacyP  = "cluster.local/ns/prod/sa/legacy"
	hello1   = Hello1_4 + ":8080"
	hello1v6 = "[" + Hello1_6 + "]:8080"
	hello2   = Hello2_4 + ":8080"
)

// Cases covers Istio's evaluation: ALLOW, DENY, none; global, namespace
// and selector scopes; every match field and its not_ form; IPv4 and IPv6;
// rules with L7 attributes; AUDIT and dry run.
var Cases = []Case{
	// Which policies apply, and the three outcomes.
	{Name: "no policies: allowed", Src: Client4, Dst: hello1, Want: Allow},
	{Name: "allow matches", Policies: []model.Policy{allowNS("allow-client", one(principals(exact(clientP))))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/allow-client"},
	{Name: "allow applies, none matches: denied", Policies: []model.Policy{allowNS("allow-client", one(principals(exact(clientP))))},
		Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "allow in another namespace does not apply", Policies: []model.Policy{pol("prod", "allow-legacy", model.ScopeNamespace, model.ActionAllow, one(principals(exact(legacyP))))},
		Src: Client4, Dst: hello1, Want: Allow},
	{Name: "deny matches", Policies: []model.Policy{denyNS("deny-prod", one(model.PolicyMatch{Namespaces: []model.StringMatch{exact("prod")}}))},
		Src: Legacy4, Dst: hello1, Want: Deny, Policy: "default/deny-prod"},
	{Name: "deny does not match, no allow: allowed", Policies: []model.Policy{denyNS("deny-prod", one(model.PolicyMatch{Namespaces: []model.StringMatch{exact("prod")}}))},
		Src: Client4, Dst: hello1, Want: Allow},
	{Name: "deny wins over allow", Policies: []model.Policy{
		allowNS("allow-all", rule()),
		denyNS("deny-client", one(principals(exact(clientP)))),
	}, Src: Client4, Dst: hello1, Want: Deny, Policy: "default/deny-client"},
	{Name: "first matching deny is the cause", Policies: []model.Policy{
		denyNS("deny-b", one(principals(presence))),
		pol("istio-system", "deny-a", model.ScopeGlobal, model.ActionDeny, one(principals(presence))),
	}, Src: Client4, Dst: hello1, Want: Deny, Policy: "istio-system/deny-a"},
	{Name: "global allow applies in every namespace", Policies: []model.Policy{
		pol("istio-system", "allow-client", model.ScopeGlobal, model.ActionAllow, one(principals(exact(clientP)))),
	}, Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "global allow matches in another namespace", Policies: []model.Policy{
		pol("istio-system", "allow-client", model.ScopeGlobal, model.ActionAllow, one(principals(exact(clientP)))),
	}, Src: Client4, Dst: DB4 + ":5432", Want: Allow, Policy: "istio-system/allow-client"},
	{Name: "selector policy applies to its workload", Policies: []model.Policy{
		pol("default", "hello-1-from-legacy", model.ScopeWorkloadSelector, model.ActionAllow, one(principals(exact(legacyP)))),
	}, Select: map[string][]string{"default/hello-1": {"default/hello-1-from-legacy"}},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "selector policy does not apply to others", Policies: []model.Policy{
		pol("default", "hello-1-from-legacy", model.ScopeWorkloadSelector, model.ActionAllow, one(principals(exact(legacyP)))),
	}, Select: map[string][]string{"default/hello-1": {"default/hello-1-from-legacy"}},
		Src: Client4, Dst: hello2, Want: Allow},
	{Name: "namespace deny and selector allow", Policies: []model.Policy{
		denyNS("deny-prod", one(model.PolicyMatch{Namespaces: []model.StringMatch{exact("prod")}})),
		pol("default", "hello-1-from-client", model.ScopeWorkloadSelector, model.ActionAllow, one(principals(exact(clientP)))),
	}, Select: map[string][]string{"default/hello-1": {"default/hello-1-from-client"}},
		Src: Client6, Dst: hello1v6, Want: Allow, Policy: "default/hello-1-from-client"},

	// Principals: exact, prefix, suffix, presence, and not_.
	{Name: "principal prefix", Policies: []model.Policy{allowNS("p", one(principals(prefix("cluster.local/ns/prod/"))))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "principal suffix", Policies: []model.Policy{allowNS("p", one(principals(suffix("/sa/client"))))},
		Src: Client6, Dst: hello1v6, Want: Allow, Policy: "default/p"},
	{Name: "principal suffix mismatch", Policies: []model.Policy{allowNS("p", one(principals(suffix("/sa/client"))))},
		Src: Legacy6, Dst: hello1v6, Want: Deny},
	{Name: "principal presence: any identity", Policies: []model.Policy{allowNS("p", one(principals(presence)))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "principal presence: no identity outside the mesh", Policies: []model.Policy{allowNS("p", one(principals(presence)))},
		Src: Outside4, Dst: hello1, Want: Deny},
	{Name: "principal of a workload without service account", Policies: []model.Policy{allowNS("p", one(principals(exact("cluster.local/ns/prod/sa/default"))))},
		Src: Anon4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "not principals excludes", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotPrincipals: []model.StringMatch{exact(clientP)}}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "not principals admits others", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotPrincipals: []model.StringMatch{exact(clientP)}}))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "not principals admits no identity", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotPrincipals: []model.StringMatch{presence}}))},
		Src: Outside6, Dst: hello1v6, Want: Allow, Policy: "default/p"},

	// Namespaces and service accounts.
	{Name: "namespace exact", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{Namespaces: []model.StringMatch{exact("default")}}))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "namespace prefix mismatch", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{Namespaces: []model.StringMatch{prefix("pro")}}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "namespace: no identity never matches", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{Namespaces: []model.StringMatch{presence}}))},
		Src: Outside4, Dst: hello1, Want: Deny},
	{Name: "not namespaces excludes", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotNamespaces: []model.StringMatch{exact("prod")}}))},
		Src: Legacy6, Dst: hello1v6, Want: Deny},
	{Name: "not namespaces admits no identity", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotNamespaces: []model.StringMatch{exact("prod")}}))},
		Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "service account", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{ServiceAccounts: []model.ServiceAccountMatch{{Namespace: "prod", Name: "legacy"}}}))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "service account of another namespace", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{ServiceAccounts: []model.ServiceAccountMatch{{Namespace: "default", Name: "legacy"}}}))},
		Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "not service accounts", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotServiceAccounts: []model.ServiceAccountMatch{{Namespace: "prod", Name: "legacy"}}}))},
		Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "not service accounts admits no identity", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotServiceAccounts: []model.ServiceAccountMatch{{Namespace: "prod", Name: "legacy"}}}))},
		Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},

	// Source IP blocks, IPv4 and IPv6.
	{Name: "source ip block v4", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("10.9.0.0/16")}))},
		Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "source ip block v6", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("fd00:9::/64")}))},
		Src: Outside6, Dst: hello1v6, Want: Allow, Policy: "default/p"},
	{Name: "source ip single address", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("10.1.1.10/32")}))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "source ip v4 block never matches v6", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("0.0.0.0/0")}))},
		Src: Client6, Dst: hello1v6, Want: Deny},
	{Name: "source ip ::/0 never matches v4", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("::/0")}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "source ip ::/0 matches v6", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("::/0")}))},
		Src: Client6, Dst: hello1v6, Want: Allow, Policy: "default/p"},
	{Name: "not source ip inside a source block", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("10.0.0.0/8"), NotSourceIPs: prefixes("10.2.0.0/16")}))},
		Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "source block outside a not block", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("10.0.0.0/8"), NotSourceIPs: prefixes("10.2.0.0/16")}))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "source block inside a not block", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{SourceIPs: prefixes("10.2.0.32/32"), NotSourceIPs: prefixes("10.0.0.0/8")}))},
		Src: Anon4, Dst: hello1, Want: Deny},
	{Name: "not source ip v6 only", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotSourceIPs: prefixes("fd00:2::/32")}))},
		Src: Legacy6, Dst: hello1v6, Want: Deny},
	{Name: "not source ip v6 admits v4", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{NotSourceIPs: prefixes("fd00:2::/32")}))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},

	// Destination IPs and ports.
	{Name: "destination ip", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{DestinationIPs: prefixes(Hello1_4 + "/32")}))},
		Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "destination ip of another workload", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{DestinationIPs: prefixes(Hello1_4 + "/32")}))},
		Src: Legacy4, Dst: hello2, Want: Deny},
	{Name: "not destination ip v6", Policies: []model.Policy{denyNS("p", one(model.PolicyMatch{NotDestinationIPs: prefixes("fd00:1:2::/48")}))},
		Src: Client6, Dst: hello1v6, Want: Deny, Policy: "default/p"},
	{Name: "destination port", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{DestinationPorts: []uint16{8080, 9090}}))},
		Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "destination port mismatch", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{DestinationPorts: []uint16{9090}}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "not destination port", Policies: []model.Policy{denyNS("p", one(model.PolicyMatch{NotDestinationPorts: []uint16{9090}}))},
		Src: Client4, Dst: hello1, Want: Deny, Policy: "default/p"},
	{Name: "not destination port spares its port", Policies: []model.Policy{denyNS("p", one(model.PolicyMatch{NotDestinationPorts: []uint16{8080}}))},
		Src: Client4, Dst: hello1, Want: Allow},

	// Structure: rules OR, clauses AND, matches OR, fields AND.
	{Name: "fields of a match all must match", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{Namespaces: []model.StringMatch{exact("default")}, DestinationPorts: []uint16{9090}}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "clauses all must match", Policies: []model.Policy{allowNS("p", rule(
		anyOf(model.PolicyMatch{Namespaces: []model.StringMatch{exact("default")}}),
		anyOf(model.PolicyMatch{DestinationPorts: []uint16{8080}}),
	))}, Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "one clause fails the rule", Policies: []model.Policy{allowNS("p", rule(
		anyOf(model.PolicyMatch{Namespaces: []model.StringMatch{exact("default")}}),
		anyOf(model.PolicyMatch{DestinationPorts: []uint16{8080}}),
	))}, Src: Legacy4, Dst: hello1, Want: Deny},
	{Name: "any match of a clause", Policies: []model.Policy{allowNS("p", rule(
		anyOf(principals(exact(clientP)), principals(exact(legacyP))),
		anyOf(model.PolicyMatch{DestinationPorts: []uint16{8080}}),
	))}, Src: Legacy6, Dst: hello1v6, Want: Allow, Policy: "default/p"},
	{Name: "any rule", Policies: []model.Policy{allowNS("p",
		one(principals(exact(clientP))),
		one(model.PolicyMatch{SourceIPs: prefixes("10.9.0.0/16")}),
	)}, Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "a failed rule does not stop the next", Policies: []model.Policy{allowNS("p",
		rule(anyOf(principals(exact(clientP))), anyOf(model.PolicyMatch{DestinationPorts: []uint16{1}})),
		rule(anyOf(principals(exact(legacyP)))),
	)}, Src: Legacy4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "allow without rules allows nothing", Policies: []model.Policy{allowNS("allow-nothing")},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "deny without rules denies nothing", Policies: []model.Policy{denyNS("deny-nothing")},
		Src: Client4, Dst: hello1, Want: Allow},
	{Name: "rule without clauses matches all", Policies: []model.Policy{allowNS("allow-all", rule())},
		Src: Outside6, Dst: hello1v6, Want: Allow, Policy: "default/allow-all"},
	{Name: "clause without matches matches all", Policies: []model.Policy{allowNS("p", rule(anyOf(), anyOf(model.PolicyMatch{DestinationPorts: []uint16{8080}})))},
		Src: Outside4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "empty match matches nothing", Policies: []model.Policy{allowNS("p", one(model.PolicyMatch{}))},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "empty match beside another", Policies: []model.Policy{allowNS("p", rule(anyOf(model.PolicyMatch{}, principals(exact(clientP)))))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},

	// L7 attributes (see the package doc of internal/authz).
	{Name: "allow rule with L7 attributes never matches", Policies: []model.Policy{allowNS("p",
		model.PolicyRule{Clauses: []model.PolicyClause{anyOf(principals(exact(clientP)))}, L7: []string{"to[0].operation.methods"}})},
		Src: Client4, Dst: hello1, Want: Deny},
	{Name: "allow: another rule without L7 still matches", Policies: []model.Policy{allowNS("p",
		model.PolicyRule{L7: []string{"to[0].operation.paths"}},
		one(principals(exact(clientP))))},
		Src: Client4, Dst: hello1, Want: Allow, Policy: "default/p"},
	{Name: "deny rule with L7 attributes matches on its L4 part", Policies: []model.Policy{denyNS("p",
		model.PolicyRule{Clauses: []model.PolicyClause{anyOf(model.PolicyMatch{DestinationPorts: []uint16{8080}})}, L7: []string{"to[0].operation.methods"}})},
		Src: Client4, Dst: hello1, Want: Deny, Policy: "default/p"},
	{Name: "deny rule with only L7 attributes denies all", Policies: []model.Policy{denyNS("p",
		model.PolicyRule{L7: []string{"from[0].source.requestPrincipals"}})},
		Src: Outside4, Dst: hello1, Want: Deny, Policy: "default/p"},

	// AUDIT and dry run change nothing, and are counted.
	{Name: "audit is counted, not enforced", Policies: []model.Policy{pol("default", "audit-client", model.ScopeNamespace, model.ActionAudit, one(principals(exact(clientP))))},
		Src: Client4, Dst: hello1, Want: Allow, Counted: []string{"default/audit-client"}},
	{Name: "audit does not make allow policies apply", Policies: []model.Policy{
		pol("default", "audit-all", model.ScopeNamespace, model.ActionAudit, rule()),
		denyNS("deny-legacy", one(principals(exact(legacyP)))),
	}, Src: Legacy4, Dst: hello1, Want: Deny, Policy: "default/deny-legacy", Counted: []string{"default/audit-all"}},
	{Name: "dry-run deny is not enforced", Policies: []model.Policy{func() model.Policy {
		p := denyNS("dry", one(principals(exact(clientP))))
		p.DryRun = true
		return p
	}()}, Src: Client4, Dst: hello1, Want: Allow, Counted: []string{"default/dry"}},
	{Name: "dry-run allow does not apply", Policies: []model.Policy{func() model.Policy {
		p := allowNS("dry", one(principals(exact(legacyP))))
		p.DryRun = true
		return p
	}()}, Src: Client4, Dst: hello1, Want: Allow},

	// Not the mesh's to judge.
	{Name: "destination outside the mesh", Policies: []model.Policy{allowNS("allow-nothing")},
		Src: Client4, Dst: Outside4 + ":80", Want: Pass},
}
