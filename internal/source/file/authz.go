package file

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/model"
)

// RootNamespace is Istio's root namespace: its policies without a selector
// apply to every workload of the mesh, and those with one to matching
// workloads of every namespace.
const RootNamespace = "istio-system"

// dryRunAnnotation marks a policy Istio evaluates without enforcing it.
const dryRunAnnotation = "istio.io/dry-run"

// apiVersions are the AuthorizationPolicy versions accepted, as kubectl does.
var apiVersions = []string{"security.istio.io/v1", "security.istio.io/v1beta1"}

// policy is a parsed AuthorizationPolicy with what the cross-checks need.
type policy struct {
	model.Policy
	path     string
	nameNode *yaml.Node        // nil if the name is missing or invalid
	selector map[string]string // matchLabels; empty: namespace or global scope
	// waypoint is set for a policy with targetRefs: it applies in a
	// waypoint, not in the kernel.
	waypoint *model.L7Policy
	// notEnforced says why a valid policy is not enforced here (CUSTOM).
	notEnforced string
}

// authorizationPolicy parses one Istio AuthorizationPolicy object as
// written for kubectl, into Istio's L4 form (what istiod sends ztunnel).
func (p *parser) authorizationPolicy(n *yaml.Node, path string) *policy {
	pol := &policy{path: path}
	pol.Namespace = "default"
	pol.Action = model.ActionAllow
	f := p.fields(n, path, "apiVersion", "kind", "metadata", "spec")
	if f == nil {
		return pol
	}
	if v := f["apiVersion"]; v == nil {
		p.errorf(n, join(path, "apiVersion"), "missing (want %s)", strings.Join(apiVersions, " or "))
	} else if s, ok := p.str(v, join(path, "apiVersion")); ok && !slices.Contains(apiVersions, s) {
		p.errorf(v, join(path, "apiVersion"), "%q is not an AuthorizationPolicy version (want %s)", s, strings.Join(apiVersions, " or "))
	}
	if v := f["kind"]; v == nil {
		p.errorf(n, join(path, "kind"), "missing (want AuthorizationPolicy)")
	} else if s, ok := p.str(v, join(path, "kind")); ok && s != "AuthorizationPolicy" {
		p.errorf(v, join(path, "kind"), "%q: only AuthorizationPolicy objects belong here", s)
	}
	if v := f["metadata"]; v == nil {
		p.errorf(n, join(path, "metadata"), "missing")
	} else {
		p.policyMetadata(pol, v, join(path, "metadata"))
	}
	if v := f["spec"]; v != nil {
		p.policySpec(pol, v, join(path, "spec"))
	}
	// Without a selector the scope follows the namespace.
	switch {
	case len(pol.selector) > 0:
		pol.Scope = model.ScopeWorkloadSelector
	case pol.Namespace == RootNamespace:
		pol.Scope = model.ScopeGlobal
	default:
		pol.Scope = model.ScopeNamespace
	}
	return pol
}

func (p *parser) policyMetadata(pol *policy, n *yaml.Node, path string) {
	f := p.fields(n, path, "name", "namespace", "labels", "annotations")
	if f == nil {
		return
	}
	if v := f["name"]; v == nil {
		p.errorf(n, join(path, "name"), "missing")
	} else if name, ok := p.subdomain(v, join(path, "name")); ok {
		pol.Name, pol.nameNode = name, v
	}
	if v := f["namespace"]; v != nil {
		if ns, ok := p.label(v, join(path, "namespace")); ok {
			pol.Namespace = ns
		} else {
			pol.nameNode = nil
		}
	}
	if v := f["labels"]; v != nil {
		p.stringMap(v, join(path, "labels"), true) // checked, not used
	}
	if v := f["annotations"]; v != nil {
		ann := p.stringMap(v, join(path, "annotations"), true)
		switch dry, ok := ann[dryRunAnnotation]; {
		case !ok:
		case dry == "true":
			pol.DryRun = true
		case dry != "false":
			p.errorf(v, join(path, "annotations"), "%s: %q is not \"true\" or \"false\"", dryRunAnnotation, dry)
		}
	}
}

func (p *parser) policySpec(pol *policy, n *yaml.Node, path string) {
	f := p.fields(n, path, "selector", "action", "rules", "provider", "targetRef", "targetRefs")
	if f == nil {
		return
	}
	if f["targetRef"] != nil || f["targetRefs"] != nil {
		p.waypointPolicy(pol, f, path)
		return
	}
	provider := ""
	if v := f["provider"]; v != nil {
		pf := p.fields(v, join(path, "provider"), "name")
		if nv := pf["name"]; nv == nil {
			p.errorf(v, join(path, "provider.name"), "missing")
		} else if name, ok := p.str(nv, join(path, "provider.name")); ok {
			provider = name
		}
	}
	if v := f["selector"]; v != nil {
		sel := p.fields(v, join(path, "selector"), "matchLabels")
		if ml := sel["matchLabels"]; ml != nil {
			pol.selector = p.stringMap(ml, join(path, "selector.matchLabels"), false)
		}
	}
	if v := f["action"]; v != nil {
		if a, ok := p.str(v, join(path, "action")); ok {
			switch a {
			case "ALLOW":
				pol.Action = model.ActionAllow
			case "DENY":
				pol.Action = model.ActionDeny
			case "AUDIT":
				pol.Action = model.ActionAudit
			case "CUSTOM":
				// Istio's node proxy (ztunnel) never sees CUSTOM policies:
				// an external authorizer runs in a waypoint or gateway. The
				// policy is accepted, listed as not enforced, and leaves
				// the other policies' enforcement as it is.
				if f["provider"] == nil {
					p.errorf(v, join(path, "provider"), "missing: a CUSTOM policy names its provider")
				}
				pol.notEnforced = "CUSTOM action (external authorization provider " + strconv.Quote(provider) +
					"): enforced by a waypoint or gateway, not at L4 on the node (ztunnel ignores it too)"
			default:
				p.errorf(v, join(path, "action"), "unknown action %q (want ALLOW, DENY, AUDIT or CUSTOM)", a)
			}
		}
	}
	if f["provider"] != nil && pol.notEnforced == "" {
		p.errorf(f["provider"], join(path, "provider"), "only a CUSTOM action takes a provider")
	}
	if v := f["rules"]; v != nil {
		p.list(v, join(path, "rules"), func(item *yaml.Node, path string) {
			pol.Rules = append(pol.Rules, p.policyRule(pol, item, path))
		})
	}
}

// policyRule translates a rule as istiod does for ztunnel: one clause of
// its to[] operations, one of its from[] sources, one per when[]
// condition. Attributes only an L7 proxy sees are left out and named in
// the rule's L7 list; a match or condition that had nothing else matches
// any connection, so its clause goes (see internal/authz).
func (p *parser) policyRule(pol *policy, n *yaml.Node, path string) model.PolicyRule {
	var rule model.PolicyRule
	f := p.fields(n, path, "from", "to", "when")
	if f == nil {
		return rule
	}
	if v := f["to"]; v != nil {
		var clause model.PolicyClause
		always := false
		p.nonEmptyList(v, join(path, "to"), func(item *yaml.Node, path string) {
			op := p.fields(item, path, "operation")
			if op == nil {
				return
			}
			on := op["operation"]
			if on == nil {
				p.errorf(item, join(path, "operation"), "missing")
				return
			}
			m, l7 := p.operation(on, join(path, "operation"))
			rule.L7 = append(rule.L7, l7...)
			if authz.Empty(&m) {
				always = true
				return
			}
			clause.Matches = append(clause.Matches, m)
		})
		if !always {
			rule.Clauses = append(rule.Clauses, clause)
		}
	}
	if v := f["from"]; v != nil {
		var clause model.PolicyClause
		always := false
		p.nonEmptyList(v, join(path, "from"), func(item *yaml.Node, path string) {
			src := p.fields(item, path, "source")
			if src == nil {
				return
			}
			sn := src["source"]
			if sn == nil {
				p.errorf(item, join(path, "source"), "missing")
				return
			}
			m, l7 := p.source(pol, sn, join(path, "source"))
			rule.L7 = append(rule.L7, l7...)
			if authz.Empty(&m) {
				always = true
				return
			}
			clause.Matches = append(clause.Matches, m)
		})
		if !always {
			rule.Clauses = append(rule.Clauses, clause)
		}
	}
	if v := f["when"]; v != nil {
		p.list(v, join(path, "when"), func(item *yaml.Node, path string) {
			m, l7, ok := p.condition(pol, item, path)
			if !ok {
				return
			}
			if l7 != "" {
				rule.L7 = append(rule.L7, l7)
				return
			}
			rule.Clauses = append(rule.Clauses, model.PolicyClause{Matches: []model.PolicyMatch{m}})
		})
	}
	return rule
}

// nonEmptyList is list, refusing an empty one: Istio's validation does,
// since an empty from or to would read as "anything" or "nothing".
func (p *parser) nonEmptyList(n *yaml.Node, path string, f func(item *yaml.Node, path string)) {
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		p.errorf(n, path, "must not be empty (leave it out to match any)")
		return
	}
	p.list(n, path, f)
}

var (
	sourceL4 = []string{"principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks"}
	sourceL7 = []string{"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"}
	opL4     = []string{"ports", "notPorts"}
	opL7     = []string{"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}
)

func (p *parser) source(pol *policy, n *yaml.Node, path string) (model.PolicyMatch, []string) {
	var m model.PolicyMatch
	errs := len(p.errs)
	f := p.fields(n, path, slices.Concat(sourceL4, sourceL7)...)
	if f == nil {
		return m, nil
	}
	if f["serviceAccounts"] != nil && f["principals"] != nil {
		p.errorf(f["serviceAccounts"], join(path, "serviceAccounts"), "cannot be set with principals")
	}
	m.Principals = p.stringMatches(f["principals"], join(path, "principals"))
	m.NotPrincipals = p.stringMatches(f["notPrincipals"], join(path, "notPrincipals"))
	m.Namespaces = p.stringMatches(f["namespaces"], join(path, "namespaces"))
	m.NotNamespaces = p.stringMatches(f["notNamespaces"], join(path, "notNamespaces"))
	m.ServiceAccounts = p.serviceAccounts(pol, f["serviceAccounts"], join(path, "serviceAccounts"))
	m.NotServiceAccounts = p.serviceAccounts(pol, f["notServiceAccounts"], join(path, "notServiceAccounts"))
	m.SourceIPs = p.blocks(f["ipBlocks"], join(path, "ipBlocks"))
	m.NotSourceIPs = p.blocks(f["notIpBlocks"], join(path, "notIpBlocks"))
	l7 := p.l7(f, path, sourceL7)
	if authz.Empty(&m) && len(l7) == 0 && len(p.errs) == errs {
		p.errorf(n, path, "must not be empty")
	}
	return m, l7
}

func (p *parser) operation(n *yaml.Node, path string) (model.PolicyMatch, []string) {
	var m model.PolicyMatch
	errs := len(p.errs)
	f := p.fields(n, path, slices.Concat(opL4, opL7)...)
	if f == nil {
		return m, nil
	}
	m.DestinationPorts = p.policyPorts(f["ports"], join(path, "ports"))
	m.NotDestinationPorts = p.policyPorts(f["notPorts"], join(path, "notPorts"))
	l7 := p.l7(f, path, opL7)
	if authz.Empty(&m) && len(l7) == 0 && len(p.errs) == errs {
		p.errorf(n, path, "must not be empty")
	}
	return m, l7
}

// l7 checks the L7 fields that are set (lists of strings) and names them.
func (p *parser) l7(f map[string]*yaml.Node, path string, keys []string) []string {
	var out []string
	for _, k := range keys {
		if v := f[k]; v != nil {
			p.list(v, join(path, k), func(item *yaml.Node, path string) { p.str(item, path) })
			out = append(out, join(path, k))
		}
	}
	return out
}

// whenKeys are the condition keys Istio knows; l4WhenKeys those ztunnel
// can check.
var (
	l4WhenKeys  = []string{"source.ip", "source.namespace", "source.principal", "source.serviceAccount", "destination.ip", "destination.port"}
	l7WhenKeys  = []string{"remote.ip", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "connection.sni"}
	l7WhenPrefs = []string{"request.headers[", "request.auth.claims[", "experimental.envoy.filters."}
)

// condition parses one when[] entry into a match of one field, or names it
// when only an L7 proxy can check it.
func (p *parser) condition(pol *policy, n *yaml.Node, path string) (m model.PolicyMatch, l7 string, ok bool) {
	f := p.fields(n, path, "key", "values", "notValues")
	if f == nil {
		return m, "", false
	}
	kn := f["key"]
	if kn == nil {
		p.errorf(n, join(path, "key"), "missing")
		return m, "", false
	}
	key, good := p.str(kn, join(path, "key"))
	if !good {
		return m, "", false
	}
	if f["values"] == nil && f["notValues"] == nil {
		p.errorf(n, path, "needs values or notValues")
		return m, "", false
	}
	if !slices.Contains(l4WhenKeys, key) {
		if slices.Contains(l7WhenKeys, key) || slices.ContainsFunc(l7WhenPrefs, func(pre string) bool { return strings.HasPrefix(key, pre) }) {
			for _, k := range []string{"values", "notValues"} {
				if v := f[k]; v != nil {
					p.list(v, join(path, k), func(item *yaml.Node, path string) { p.str(item, path) })
				}
			}
			return m, path + " " + key, true
		}
		p.errorf(kn, join(path, "key"), "unknown condition key %q", key)
		return m, "", false
	}
	values, notValues := f["values"], f["notValues"]
	vp, np := join(path, "values"), join(path, "notValues")
	switch key {
	case "source.ip":
		m.SourceIPs, m.NotSourceIPs = p.blocks(values, vp), p.blocks(notValues, np)
	case "destination.ip":
		m.DestinationIPs, m.NotDestinationIPs = p.blocks(values, vp), p.blocks(notValues, np)
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = p.stringMatches(values, vp), p.stringMatches(notValues, np)
	case "source.principal":
		m.Principals, m.NotPrincipals = p.stringMatches(values, vp), p.stringMatches(notValues, np)
	case "source.serviceAccount":
		// As from.source.serviceAccounts: NAME (in the policy's
		// namespace) or NAMESPACE/NAME.
		m.ServiceAccounts, m.NotServiceAccounts = p.serviceAccounts(pol, values, vp), p.serviceAccounts(pol, notValues, np)
	case "destination.port":
		m.DestinationPorts, m.NotDestinationPorts = p.policyPorts(values, vp), p.policyPorts(notValues, np)
	}
	return m, "", true
}

// stringMatches parses Istio's string values: "*" is any non-empty value,
// "*x" ends with x, "x*" starts with x, anything else is exact.
func (p *parser) stringMatches(n *yaml.Node, path string) []model.StringMatch {
	if n == nil {
		return nil
	}
	var out []model.StringMatch
	p.list(n, path, func(item *yaml.Node, path string) {
		s, ok := p.str(item, path)
		if !ok {
			return
		}
		var sm model.StringMatch
		switch {
		case s == "":
			p.errorf(item, path, "empty value")
			return
		case s == "*":
			sm = model.StringMatch{Kind: model.MatchPresence}
		case len(s) > 2 && strings.Contains(s[1:len(s)-1], "*"), s == "**":
			p.errorf(item, path, "%q: '*' may only start or end a value", s)
			return
		case strings.HasPrefix(s, "*"):
			sm = model.StringMatch{Kind: model.MatchSuffix, Value: s[1:]}
		case strings.HasSuffix(s, "*"):
			sm = model.StringMatch{Kind: model.MatchPrefix, Value: s[:len(s)-1]}
		default:
			sm = model.StringMatch{Kind: model.MatchExact, Value: s}
		}
		out = append(out, sm)
	})
	return out
}

// serviceAccounts parses "name" (in the policy's namespace) or
// "namespace/name".
func (p *parser) serviceAccounts(pol *policy, n *yaml.Node, path string) []model.ServiceAccountMatch {
	if n == nil {
		return nil
	}
	var out []model.ServiceAccountMatch
	p.list(n, path, func(item *yaml.Node, path string) {
		s, ok := p.str(item, path)
		if !ok {
			return
		}
		ns, name, qualified := strings.Cut(s, "/")
		if !qualified {
			ns, name = pol.Namespace, s
		}
		if !isDNSLabel(ns) || !isDNSSubdomain(name) {
			p.errorf(item, path, "%q is not a service account (name or namespace/name)", s)
			return
		}
		out = append(out, model.ServiceAccountMatch{Namespace: ns, Name: name})
	})
	return out
}

// blocks parses addresses and CIDR blocks, IPv4 or IPv6. A block with host
// bits set is taken as the block that holds it, as Envoy does.
func (p *parser) blocks(n *yaml.Node, path string) []netip.Prefix {
	if n == nil {
		return nil
	}
	var out []netip.Prefix
	p.list(n, path, func(item *yaml.Node, path string) {
		s, ok := p.str(item, path)
		if !ok {
			return
		}
		var pre netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			pre, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				pre = netip.PrefixFrom(a, a.BitLen())
			}
		}
		switch {
		case err != nil:
			p.errorf(item, path, "%q is not an IP address or CIDR block", s)
		case pre.Addr().Zone() != "":
			p.errorf(item, path, "%q has a zone; zones are not supported", s)
		case pre.Addr().Is4In6():
			p.errorf(item, path, "%q is IPv4-mapped IPv6; write the IPv4 block", s)
		default:
			out = append(out, pre.Masked())
		}
	})
	return out
}

// policyPorts parses ports written as strings, as Istio's API has them, or
// as integers.
func (p *parser) policyPorts(n *yaml.Node, path string) []uint16 {
	if n == nil {
		return nil
	}
	var out []uint16
	p.list(n, path, func(item *yaml.Node, path string) {
		if item.Kind != yaml.ScalarNode || isNull(item) {
			p.errorf(item, path, "expected a port, got %s", describe(item))
			return
		}
		v, err := strconv.ParseUint(item.Value, 10, 16)
		if err != nil || v == 0 {
			p.errorf(item, path, "%q is not a port (1..65535)", item.Value)
			return
		}
		out = append(out, uint16(v))
	})
	return out
}

// checkPolicies reports policies defined twice, at the second one.
func (p *parser) checkPolicies(policies []*policy) {
	first := map[string]*policy{}
	for _, pol := range policies {
		if pol.nameNode == nil {
			continue
		}
		if prev, dup := first[pol.Key()]; dup {
			p.errorf(pol.nameNode, join(pol.path, "metadata.name"), "policy %s is defined twice (first at %s, line %d)",
				pol.Key(), prev.path, prev.nameNode.Line)
			continue
		}
		first[pol.Key()] = pol
	}
}

// selectPolicies lists each workload-selector policy on the workloads its
// selector matches: those of its namespace, or of every namespace for a
// policy in the root namespace.
func selectPolicies(policies []*policy, workloads []model.Workload, labels *model.LabelIndex) {
	// The namespaces of the mesh only for a mesh-wide policy, and the
	// sort only over workloads a policy selected: a mesh without such
	// policies (every first sync of a large one) costs nothing here
	// rather than a pass over every workload.
	var namespaces []string
	var selected []int
	for _, pol := range policies {
		if pol.Scope != model.ScopeWorkloadSelector {
			continue
		}
		nss := []string{pol.Namespace}
		if pol.Namespace == RootNamespace {
			if namespaces == nil {
				namespaces = meshNamespaces(workloads)
			}
			nss = namespaces
		}
		for _, ns := range nss {
			for _, i := range labels.Select(ns, pol.selector) {
				workloads[i].Policies = append(workloads[i].Policies, pol.Key())
				selected = append(selected, i)
			}
		}
	}
	for _, i := range selected {
		slices.Sort(workloads[i].Policies)
	}
}

// meshNamespaces lists the namespaces of workloads, in order of first use.
func meshNamespaces(workloads []model.Workload) []string {
	var out []string
	seen := map[string]bool{}
	for _, w := range workloads {
		if !seen[w.Namespace] {
			seen[w.Namespace] = true
			out = append(out, w.Namespace)
		}
	}
	return out
}
