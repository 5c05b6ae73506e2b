package file

import (
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// mtlsMode is a PeerAuthentication mode.
type mtlsMode string

const (
	mtlsUnset      mtlsMode = "UNSET"
	mtlsDisable    mtlsMode = "DISABLE"
	mtlsPermissive mtlsMode = "PERMISSIVE"
	mtlsStrict     mtlsMode = "STRICT"
)

// Names of the policies PeerAuthentications become, as istiod names them
// for ztunnel (pilot/pkg/serviceregistry/ambient/authorization.go): '_' is
// not allowed in Kubernetes names, so they cannot clash with a user's.
const (
	staticStrictName  = "istio_converted_static_strict"
	convertedPAPrefix = "converted_peer_authentication_"
)

// peerAuth is a parsed PeerAuthentication.
type peerAuth struct {
	name, namespace string
	path            string
	nameNode        *yaml.Node
	selector        map[string]string // matchLabels; empty: namespace or mesh-wide
	mode            mtlsMode
	ports           map[uint16]mtlsMode // portLevelMtls: target ports of the workload
}

func (pa *peerAuth) key() string { return pa.namespace + "/" + pa.name }

// peerAuthentication parses one Istio PeerAuthentication object as written
// for kubectl.
func (p *parser) peerAuthentication(n *yaml.Node, path string) *peerAuth {
	pa := &peerAuth{path: path, namespace: "default", mode: mtlsUnset}
	f := p.fields(n, path, "apiVersion", "kind", "metadata", "spec")
	if f == nil {
		return pa
	}
	if v := f["apiVersion"]; v == nil {
		p.errorf(n, join(path, "apiVersion"), "missing (want %s)", strings.Join(apiVersions, " or "))
	} else if s, ok := p.str(v, join(path, "apiVersion")); ok && !slices.Contains(apiVersions, s) {
		p.errorf(v, join(path, "apiVersion"), "%q is not a PeerAuthentication version (want %s)", s, strings.Join(apiVersions, " or "))
	}
	if v := f["kind"]; v == nil {
		p.errorf(n, join(path, "kind"), "missing (want PeerAuthentication)")
	} else if s, ok := p.str(v, join(path, "kind")); ok && s != "PeerAuthentication" {
		p.errorf(v, join(path, "kind"), "%q: only PeerAuthentication objects belong here", s)
	}
	if v := f["metadata"]; v == nil {
		p.errorf(n, join(path, "metadata"), "missing")
	} else if md := p.fields(v, join(path, "metadata"), "name", "namespace", "labels", "annotations"); md != nil {
		mp := join(path, "metadata")
		if nv := md["name"]; nv == nil {
			p.errorf(v, join(mp, "name"), "missing")
		} else if name, ok := p.subdomain(nv, join(mp, "name")); ok {
			pa.name, pa.nameNode = name, nv
		}
		if nv := md["namespace"]; nv != nil {
			if ns, ok := p.label(nv, join(mp, "namespace")); ok {
				pa.namespace = ns
			} else {
				pa.nameNode = nil
			}
		}
		for _, k := range []string{"labels", "annotations"} {
			if nv := md[k]; nv != nil {
				p.stringMap(nv, join(mp, k), true) // checked, not used
			}
		}
	}
	if v := f["spec"]; v != nil {
		p.peerAuthSpec(pa, v, join(path, "spec"))
	}
	return pa
}

func (p *parser) peerAuthSpec(pa *peerAuth, n *yaml.Node, path string) {
	f := p.fields(n, path, "selector", "mtls", "portLevelMtls")
	if f == nil {
		return
	}
	if v := f["selector"]; v != nil {
		sel := p.fields(v, join(path, "selector"), "matchLabels")
		if ml := sel["matchLabels"]; ml != nil {
			pa.selector = p.stringMap(ml, join(path, "selector.matchLabels"), false)
		}
	}
	if v := f["mtls"]; v != nil {
		pa.mode = p.mtls(v, join(path, "mtls"))
	}
	if v := f["portLevelMtls"]; v != nil {
		pp := join(path, "portLevelMtls")
		if len(pa.selector) == 0 {
			// As Istio's validation: a port is a port of a workload.
			p.errorf(v, pp, "needs spec.selector (port-level modes apply to selected workloads)")
			return
		}
		if v.Kind != yaml.MappingNode {
			p.errorf(v, pp, "expected a mapping of port numbers to {mode: ...}, got %s", describe(v))
			return
		}
		pa.ports = map[uint16]mtlsMode{}
		p.pairs(v, pp, func(k, val *yaml.Node) {
			port, err := strconv.ParseUint(k.Value, 10, 16)
			if err != nil || port == 0 {
				p.errorf(k, pp, "%q is not a port (1..65535)", k.Value)
				return
			}
			pa.ports[uint16(port)] = p.mtls(val, pp+"["+k.Value+"]")
		})
	}
}

// mtls parses {mode: UNSET|DISABLE|PERMISSIVE|STRICT}.
func (p *parser) mtls(n *yaml.Node, path string) mtlsMode {
	f := p.fields(n, path, "mode")
	v := f["mode"]
	if v == nil {
		return mtlsUnset
	}
	s, ok := p.str(v, join(path, "mode"))
	if !ok {
		return mtlsUnset
	}
	switch m := mtlsMode(s); m {
	case mtlsUnset, mtlsDisable, mtlsPermissive, mtlsStrict:
		return m
	}
	p.errorf(v, join(path, "mode"), "unknown mode %q (want UNSET, DISABLE, PERMISSIVE or STRICT)", s)
	return mtlsUnset
}

func (p *parser) checkPeerAuths(pas []*peerAuth) {
	first := map[string]*peerAuth{}
	for _, pa := range pas {
		if pa.nameNode == nil {
			continue
		}
		if prev, dup := first[pa.key()]; dup {
			p.errorf(pa.nameNode, join(pa.path, "metadata.name"), "peer authentication %s is defined twice (first at %s, line %d)",
				pa.key(), prev.path, prev.nameNode.Line)
			continue
		}
		first[pa.key()] = pa
	}
}

// convertPeerAuths turns the PeerAuthentications into DENY policies on
// "no principal", as istiod does for ztunnel (PolicyCollections in
// pilot/pkg/serviceregistry/ambient/policies.go): a workload whose mode is
// STRICT lists the static policy; a workload with port-level exceptions
// gets a policy of its own, on the ports that differ. A connection has a
// principal when it came through the tunnel (the peer's certificate) or
// from a workload of the same node (its address); see docs/config.md.
//
// The mode of a workload is that of the first PeerAuthentication in the
// file (Istio: the oldest) that selects it in its namespace, else of its
// namespace's without a selector, else of the root namespace's without a
// selector; UNSET inherits the next one, and the default is PERMISSIVE.
func convertPeerAuths(pas []*peerAuth, workloads []model.Workload) []model.Policy {
	if len(pas) == 0 {
		return nil
	}
	nsWide := func(ns string) mtlsMode {
		for _, pa := range pas {
			if pa.namespace == ns && len(pa.selector) == 0 {
				return pa.mode
			}
		}
		return mtlsUnset
	}
	rootMode := nsWide(RootNamespace)
	noPrincipal := model.PolicyMatch{NotPrincipals: []model.StringMatch{{Kind: model.MatchPresence}}}
	var out []model.Policy
	static := false
	for i := range workloads {
		w := &workloads[i]
		var sel *peerAuth
		for _, pa := range pas {
			if pa.namespace == w.Namespace && len(pa.selector) > 0 && model.SelectorMatches(pa.selector, w.Labels) {
				sel = pa
				break
			}
		}
		mode := mtlsUnset
		if sel != nil {
			mode = sel.mode
		}
		for _, m := range []mtlsMode{nsWide(w.Namespace), rootMode, mtlsPermissive} {
			if mode == mtlsUnset {
				mode = m
			}
		}
		var strictPorts, laxPorts []uint16
		if sel != nil {
			for port, m := range sel.ports {
				switch {
				case m == mtlsStrict && mode != mtlsStrict:
					strictPorts = append(strictPorts, port)
				case (m == mtlsPermissive || m == mtlsDisable) && mode == mtlsStrict:
					laxPorts = append(laxPorts, port)
				}
			}
		}
		slices.Sort(strictPorts)
		slices.Sort(laxPorts)
		match := noPrincipal
		switch {
		case len(laxPorts) > 0:
			match.NotDestinationPorts = laxPorts
		case len(strictPorts) > 0:
			match.DestinationPorts = strictPorts
		case mode == mtlsStrict:
			w.Policies = append(w.Policies, RootNamespace+"/"+staticStrictName)
			slices.Sort(w.Policies)
			static = true
			continue
		default:
			continue
		}
		pol := model.Policy{
			Name: convertedPAPrefix + sel.name, Namespace: sel.namespace,
			Scope: model.ScopeWorkloadSelector, Action: model.ActionDeny,
			Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{match}}}}},
		}
		// One policy per PeerAuthentication: workloads it selects share it.
		if !slices.ContainsFunc(out, func(p model.Policy) bool { return p.Key() == pol.Key() }) {
			out = append(out, pol)
		}
		w.Policies = append(w.Policies, pol.Key())
		slices.Sort(w.Policies)
	}
	if static {
		out = append(out, model.Policy{
			Name: staticStrictName, Namespace: RootNamespace,
			Scope: model.ScopeWorkloadSelector, Action: model.ActionDeny,
			Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{noPrincipal}}}}},
		})
	}
	return out
}
