package file

import (
	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// waypointPolicy parses an AuthorizationPolicy with targetRefs (a Gateway
// or Services): kmesh-waypoint enforces it on requests, with every L7
// attribute, and the kernel leaves it alone.
func (p *parser) waypointPolicy(pol *policy, f map[string]*yaml.Node, path string) {
	wp := &model.L7Policy{Name: pol.Name, Namespace: pol.Namespace, Action: model.ActionAllow, DryRun: pol.DryRun}
	pol.waypoint = wp
	if v := f["selector"]; v != nil {
		p.errorf(v, join(path, "selector"), "cannot be set with targetRefs")
	}
	if v := f["provider"]; v != nil {
		p.errorf(v, join(path, "provider"), "CUSTOM (external authorization) policies are not supported")
	}
	if f["targetRef"] != nil && f["targetRefs"] != nil {
		p.errorf(f["targetRef"], join(path, "targetRef"), "cannot be set with targetRefs")
	}
	if v := f["targetRef"]; v != nil {
		if ref, ok := p.parentRef(v, join(path, "targetRef"), ""); ok {
			wp.TargetRefs = append(wp.TargetRefs, ref)
		}
	}
	if v := f["targetRefs"]; v != nil {
		p.nonEmptyList(v, join(path, "targetRefs"), func(item *yaml.Node, path string) {
			if ref, ok := p.parentRef(item, path, ""); ok {
				if ref.Kind == "" {
					p.errorf(item, join(path, "kind"), "missing (Gateway or Service)")
					return
				}
				wp.TargetRefs = append(wp.TargetRefs, ref)
			}
		})
	}
	if v := f["action"]; v != nil {
		if a, ok := p.str(v, join(path, "action")); ok {
			switch a {
			case "ALLOW":
			case "DENY":
				wp.Action = model.ActionDeny
			case "AUDIT":
				wp.Action = model.ActionAudit
			default:
				p.errorf(v, join(path, "action"), "unknown action %q (want ALLOW, DENY or AUDIT)", a)
			}
		}
	}
	if v := f["rules"]; v != nil {
		p.list(v, join(path, "rules"), func(item *yaml.Node, path string) {
			wp.Rules = append(wp.Rules, p.l7Rule(item, path))
		})
	}
	// Keep the copy current: metadata was parsed before the spec.
	pol.Scope = model.ScopeNamespace
}

func (p *parser) l7Rule(n *yaml.Node, path string) model.L7Rule {
	var r model.L7Rule
	f := p.fields(n, path, "from", "to", "when")
	if f == nil {
		return r
	}
	if v := f["from"]; v != nil {
		p.nonEmptyList(v, join(path, "from"), func(item *yaml.Node, path string) {
			sf := p.fields(item, path, "source")
			if sf["source"] == nil {
				p.errorf(item, join(path, "source"), "missing")
				return
			}
			sp := join(path, "source")
			g := p.fields(sf["source"], sp, "principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks",
				"notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals",
				"serviceAccounts", "notServiceAccounts")
			var s model.L7Source
			s.Principals, s.NotPrincipals = p.strings(g, sp, "principals"), p.strings(g, sp, "notPrincipals")
			s.Namespaces, s.NotNamespaces = p.strings(g, sp, "namespaces"), p.strings(g, sp, "notNamespaces")
			s.IPBlocks, s.NotIPBlocks = p.strings(g, sp, "ipBlocks"), p.strings(g, sp, "notIpBlocks")
			s.RemoteIPBlocks, s.NotRemoteIPBlks = p.strings(g, sp, "remoteIpBlocks"), p.strings(g, sp, "notRemoteIpBlocks")
			s.RequestPrincipals, s.NotReqPrinc = p.strings(g, sp, "requestPrincipals"), p.strings(g, sp, "notRequestPrincipals")
			// serviceAccounts are principals of the trust domain.
			for _, k := range []string{"serviceAccounts", "notServiceAccounts"} {
				for _, sa := range p.serviceAccounts(&policy{Policy: model.Policy{Namespace: "default"}}, g[k], join(sp, k)) {
					id := "cluster.local/ns/" + sa.Namespace + "/sa/" + sa.Name
					if k == "serviceAccounts" {
						s.Principals = append(s.Principals, id)
					} else {
						s.NotPrincipals = append(s.NotPrincipals, id)
					}
				}
			}
			for _, k := range []string{"ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"} {
				p.blocks(g[k], join(sp, k))
			}
			r.From = append(r.From, s)
		})
	}
	if v := f["to"]; v != nil {
		p.nonEmptyList(v, join(path, "to"), func(item *yaml.Node, path string) {
			of := p.fields(item, path, "operation")
			if of["operation"] == nil {
				p.errorf(item, join(path, "operation"), "missing")
				return
			}
			op := join(path, "operation")
			g := p.fields(of["operation"], op, "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
			var o model.L7Operation
			o.Hosts, o.NotHosts = p.strings(g, op, "hosts"), p.strings(g, op, "notHosts")
			o.Ports, o.NotPorts = p.strings(g, op, "ports"), p.strings(g, op, "notPorts")
			o.Methods, o.NotMethods = p.strings(g, op, "methods"), p.strings(g, op, "notMethods")
			o.Paths, o.NotPaths = p.strings(g, op, "paths"), p.strings(g, op, "notPaths")
			p.policyPorts(g["ports"], join(op, "ports"))
			p.policyPorts(g["notPorts"], join(op, "notPorts"))
			r.To = append(r.To, o)
		})
	}
	if v := f["when"]; v != nil {
		p.list(v, join(path, "when"), func(item *yaml.Node, path string) {
			cf := p.fields(item, path, "key", "values", "notValues")
			if cf == nil {
				return
			}
			var c model.L7Condition
			if k := cf["key"]; k == nil {
				p.errorf(item, join(path, "key"), "missing")
			} else {
				c.Key, _ = p.str(k, join(path, "key"))
			}
			if cf["values"] == nil && cf["notValues"] == nil {
				p.errorf(item, path, "needs values or notValues")
			}
			c.Values, c.NotValues = p.strings(cf, path, "values"), p.strings(cf, path, "notValues")
			r.When = append(r.When, c)
		})
	}
	return r
}

// strings returns the list of strings at f[key].
func (p *parser) strings(f map[string]*yaml.Node, path, key string) []string {
	v := f[key]
	if v == nil {
		return nil
	}
	var out []string
	p.list(v, join(path, key), func(item *yaml.Node, path string) {
		if s, ok := p.str(item, path); ok {
			out = append(out, s)
		}
	})
	return out
}
