package waypoint

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kmesh-go/kmesh/internal/model"
)

// attrs are what an L7 AuthorizationPolicy can look at in a request.
type attrs struct {
	principal string // peer identity without spiffe://, "" if unknown
	srcIP     netip.Addr
	dst       netip.AddrPort // the service VIP:port the client asked for
	host      string
	method    string
	path      string
	header    http.Header
	// tcp: a connection on a TCP port, forwarded as L4, which has no
	// host, method, path, headers or request principal. As Istio
	// evaluates such policies on TCP: a DENY rule ignores those fields
	// (it denies more than asked, never less), an ALLOW rule that names
	// any never matches.
	tcp bool
}

// namespace is the namespace part of the principal.
func (a *attrs) namespace() string {
	_, rest, ok := strings.Cut(a.principal, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// decision is the outcome of policy evaluation.
type decision struct {
	allow  bool
	policy string // the policy that decided, "" when none applied
}

// authorize evaluates the policies as Istio does: a matching DENY denies;
// then, if any ALLOW policy applies, the request must match one of them.
// Dry-run and AUDIT policies never decide.
func authorize(policies []*model.L7Policy, a *attrs) decision {
	allows, allowed := 0, ""
	for _, p := range policies {
		if p.DryRun {
			continue
		}
		switch p.Action {
		case model.ActionDeny:
			if policyMatches(p, a, true) {
				return decision{allow: false, policy: p.Key()}
			}
		case model.ActionAllow:
			allows++
			if allowed == "" && policyMatches(p, a, false) {
				allowed = p.Key()
			}
		}
	}
	if allows == 0 {
		return decision{allow: true}
	}
	if allowed != "" {
		return decision{allow: true, policy: allowed}
	}
	return decision{allow: false, policy: "(no ALLOW policy matched)"}
}

func policyMatches(p *model.L7Policy, a *attrs, deny bool) bool {
	for i := range p.Rules {
		if a.tcp && !deny && httpOnly(&p.Rules[i]) {
			continue
		}
		if ruleMatches(&p.Rules[i], a) {
			return true
		}
	}
	return false
}

func ruleMatches(r *model.L7Rule, a *attrs) bool {
	if len(r.From) > 0 {
		ok := false
		for i := range r.From {
			if sourceMatches(&r.From[i], a) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.To) > 0 {
		ok := false
		for i := range r.To {
			if operationMatches(&r.To[i], a) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range r.When {
		if !conditionMatches(&r.When[i], a) {
			return false
		}
	}
	return true
}

// httpOnly reports whether the rule names an attribute only a request
// has.
func httpOnly(r *model.L7Rule) bool {
	for i := range r.From {
		if len(r.From[i].RequestPrincipals)+len(r.From[i].NotReqPrinc) > 0 {
			return true
		}
	}
	for i := range r.To {
		o := &r.To[i]
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
			return true
		}
	}
	for i := range r.When {
		if strings.HasPrefix(r.When[i].Key, "request.") {
			return true
		}
	}
	return false
}

// field checks one attribute against values and notValues: any of values
// (when given) and none of notValues.
func field(values, notValues []string, v string, eq func(pattern, v string) bool) bool {
	if len(values) > 0 && !anyOf(values, v, eq) {
		return false
	}
	return len(notValues) == 0 || !anyOf(notValues, v, eq)
}

func anyOf(patterns []string, v string, eq func(pattern, v string) bool) bool {
	for _, p := range patterns {
		if eq(p, v) {
			return true
		}
	}
	return false
}

// istioMatch is Istio's string value: "*" any non-empty, "x*" prefix, "*x"
// suffix, else exact.
func istioMatch(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	}
	return v == pattern
}

// hostMatch is istioMatch without case, with or without the port.
func hostMatch(pattern, host string) bool {
	pattern, host = strings.ToLower(pattern), strings.ToLower(host)
	if istioMatch(pattern, host) {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		return istioMatch(pattern, h)
	}
	return false
}

// ipMatch matches an address or CIDR block.
func ipMatch(pattern, v string) bool {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return false
	}
	if strings.Contains(pattern, "/") {
		p, err := netip.ParsePrefix(pattern)
		return err == nil && p.Masked().Contains(a)
	}
	b, err := netip.ParseAddr(pattern)
	return err == nil && b == a
}

func exact(pattern, v string) bool { return pattern == v }

func sourceMatches(s *model.L7Source, a *attrs) bool {
	src := ""
	if a.srcIP.IsValid() {
		src = a.srcIP.Unmap().String()
	}
	return field(s.Principals, s.NotPrincipals, a.principal, istioMatch) &&
		field(s.Namespaces, s.NotNamespaces, a.namespace(), istioMatch) &&
		field(s.IPBlocks, s.NotIPBlocks, src, ipMatch) &&
		field(s.RemoteIPBlocks, s.NotRemoteIPBlks, src, ipMatch) &&
		// No JWT is validated here: a request has no request principal.
		(a.tcp || field(s.RequestPrincipals, s.NotReqPrinc, "", istioMatch))
}

func operationMatches(o *model.L7Operation, a *attrs) bool {
	if a.tcp {
		return field(o.Ports, o.NotPorts, strconv.Itoa(int(a.dst.Port())), exact)
	}
	return field(o.Hosts, o.NotHosts, a.host, hostMatch) &&
		field(o.Ports, o.NotPorts, strconv.Itoa(int(a.dst.Port())), exact) &&
		field(o.Methods, o.NotMethods, a.method, istioMatch) &&
		field(o.Paths, o.NotPaths, a.path, istioMatch)
}

func conditionMatches(c *model.L7Condition, a *attrs) bool {
	if a.tcp && strings.HasPrefix(c.Key, "request.") {
		return true
	}
	var v string
	eq := istioMatch
	switch k := c.Key; {
	case strings.HasPrefix(k, "request.headers[") && strings.HasSuffix(k, "]"):
		v = strings.Join(a.header.Values(k[len("request.headers["):len(k)-1]), ",")
	case k == "source.ip", k == "remote.ip":
		if a.srcIP.IsValid() {
			v = a.srcIP.Unmap().String()
		}
		eq = ipMatch
	case k == "source.namespace":
		v = a.namespace()
	case k == "source.principal":
		v = a.principal
	case k == "destination.ip":
		v, eq = a.dst.Addr().Unmap().String(), ipMatch
	case k == "destination.port":
		v, eq = strconv.Itoa(int(a.dst.Port())), exact
	default:
		// request.auth.*, connection.sni: nothing here sets them.
	}
	return field(c.Values, c.NotValues, v, eq)
}
