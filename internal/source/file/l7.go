package file

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// The L7 objects are Gateway API and Istio objects as written for kubectl;
// kmesh-waypoint reads them from the same file as kmeshd.

var (
	gatewayAPIVersions = []string{"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"}
	grpcRouteVersions  = []string{"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"}
	vsAPIVersions      = []string{"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
	// gatewayDuration is Gateway API's duration (GEP-2257).
	gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
)

// object checks apiVersion and kind and parses metadata (name, namespace,
// labels, annotations); it returns the spec node (nil if missing) and the
// name node (nil if the name is bad).
func (p *parser) object(n *yaml.Node, path, kind string, versions []string) (name, ns string, labels map[string]string, nameNode, spec *yaml.Node) {
	ns = "default"
	f := p.fields(n, path, "apiVersion", "kind", "metadata", "spec")
	if f == nil {
		return
	}
	if v := f["apiVersion"]; v == nil {
		p.errorf(n, join(path, "apiVersion"), "missing (want %s)", strings.Join(versions, " or "))
	} else if s, ok := p.str(v, join(path, "apiVersion")); ok && !slices.Contains(versions, s) {
		p.errorf(v, join(path, "apiVersion"), "%q is not a %s version (want %s)", s, kind, strings.Join(versions, " or "))
	}
	if v := f["kind"]; v == nil {
		p.errorf(n, join(path, "kind"), "missing (want %s)", kind)
	} else if s, ok := p.str(v, join(path, "kind")); ok && s != kind {
		p.errorf(v, join(path, "kind"), "%q: only %s objects belong here", s, kind)
	}
	if v := f["metadata"]; v == nil {
		p.errorf(n, join(path, "metadata"), "missing")
	} else {
		mp := join(path, "metadata")
		m := p.fields(v, mp, "name", "namespace", "labels", "annotations")
		if m != nil {
			if nv := m["name"]; nv == nil {
				p.errorf(v, join(mp, "name"), "missing")
			} else if s, ok := p.subdomain(nv, join(mp, "name")); ok {
				name, nameNode = s, nv
			}
			if nv := m["namespace"]; nv != nil {
				if s, ok := p.label(nv, join(mp, "namespace")); ok {
					ns = s
				} else {
					nameNode = nil
				}
			}
			if nv := m["labels"]; nv != nil {
				labels = p.stringMap(nv, join(mp, "labels"), true)
			}
			if nv := m["annotations"]; nv != nil {
				p.stringMap(nv, join(mp, "annotations"), true)
			}
		}
	}
	if v := f["spec"]; v == nil {
		p.errorf(n, join(path, "spec"), "missing")
	} else {
		spec = v
	}
	return
}

// gateway is a parsed Gateway.
type gateway struct {
	model.Gateway
	path     string
	nameNode *yaml.Node
}

func (p *parser) gateway(n *yaml.Node, path string) *gateway {
	g := &gateway{path: path}
	var spec *yaml.Node
	g.Name, g.Namespace, g.Labels, g.nameNode, spec = p.object(n, path, "Gateway", gatewayAPIVersions)
	if spec == nil {
		return g
	}
	sp := join(path, "spec")
	f := p.fields(spec, sp, "gatewayClassName", "listeners", "addresses", "infrastructure")
	if f == nil {
		return g
	}
	if v := f["gatewayClassName"]; v == nil {
		p.errorf(spec, join(sp, "gatewayClassName"), "missing (want %s)", model.WaypointClass)
	} else if s, ok := p.str(v, join(sp, "gatewayClassName")); ok {
		if s != model.WaypointClass {
			p.errorf(v, join(sp, "gatewayClassName"), "%q: only waypoints of class %s are supported", s, model.WaypointClass)
		}
		g.ClassName = s
	}
	if v := f["listeners"]; v == nil {
		p.errorf(spec, join(sp, "listeners"), "missing (a waypoint needs a listener on port %d, protocol HBONE)", model.HBONEPort)
	} else {
		hbone := false
		p.list(v, join(sp, "listeners"), func(item *yaml.Node, path string) {
			l := p.fields(item, path, "name", "port", "protocol", "allowedRoutes", "hostname")
			if l == nil {
				return
			}
			var gl model.GatewayListener
			if nv := l["name"]; nv == nil {
				p.errorf(item, join(path, "name"), "missing")
			} else if s, ok := p.subdomain(nv, join(path, "name")); ok {
				gl.Name = s
			}
			if nv := l["port"]; nv == nil {
				p.errorf(item, join(path, "port"), "missing")
			} else if port, ok := p.integer(nv, join(path, "port"), 1, 65535); ok {
				gl.Port = uint16(port)
			}
			if nv := l["protocol"]; nv == nil {
				p.errorf(item, join(path, "protocol"), "missing")
			} else if s, ok := p.str(nv, join(path, "protocol")); ok {
				gl.Protocol = s
			}
			if gl.Port == model.HBONEPort && gl.Protocol == "HBONE" {
				hbone = true
			}
			g.Listeners = append(g.Listeners, gl)
		})
		if !hbone && len(p.errs) == 0 {
			p.errorf(v, join(sp, "listeners"), "a waypoint needs a listener on port %d with protocol HBONE", model.HBONEPort)
		}
	}
	if v := f["addresses"]; v != nil {
		p.list(v, join(sp, "addresses"), func(item *yaml.Node, path string) { p.fields(item, path, "type", "value") })
	}
	if wf := g.Labels[model.LabelWaypointFor]; wf != "" && !slices.Contains([]string{"service", "workload", "all", "none"}, wf) {
		p.errorf(mapValue(n, "metadata", "labels", model.LabelWaypointFor), join(path, "metadata.labels"), "%s: %q is not service, workload, all or none", model.LabelWaypointFor, wf)
	}
	return g
}

// mapValue returns the value at keys under the mapping n (the label
// itself, for an error's line), or n when a key is missing.
func mapValue(n *yaml.Node, keys ...string) *yaml.Node {
	at := resolve(n)
	for _, k := range keys {
		var next *yaml.Node
		for i := 0; at.Kind == yaml.MappingNode && i+1 < len(at.Content); i += 2 {
			if at.Content[i].Value == k {
				next = resolve(at.Content[i+1])
			}
		}
		if next == nil {
			return n
		}
		at = next
	}
	return at
}

// route is a parsed HTTPRoute or GRPCRoute.
type route struct {
	model.Route
	path       string
	nameNode   *yaml.Node
	parentNode []*yaml.Node // one per ParentRefs entry
	backends   []backendNode
}

// backendNode is a backendRef with the node errors about it point at.
type backendNode struct {
	ref  *model.BackendRef
	node *yaml.Node
	path string
}

func (p *parser) route(n *yaml.Node, path string, kind model.RouteKind) *route {
	r := &route{path: path}
	r.Kind = kind
	versions := gatewayAPIVersions
	if kind == model.KindGRPCRoute {
		versions = grpcRouteVersions
	}
	var spec *yaml.Node
	r.Name, r.Namespace, _, r.nameNode, spec = p.object(n, path, string(kind), versions)
	if spec == nil {
		return r
	}
	sp := join(path, "spec")
	f := p.fields(spec, sp, "parentRefs", "hostnames", "rules")
	if f == nil {
		return r
	}
	if v := f["parentRefs"]; v == nil {
		p.errorf(spec, join(sp, "parentRefs"), "missing (a mesh route names its Service)")
	} else {
		p.list(v, join(sp, "parentRefs"), func(item *yaml.Node, path string) {
			ref, ok := p.parentRef(item, path, "Gateway")
			if ok {
				r.ParentRefs = append(r.ParentRefs, ref)
				r.parentNode = append(r.parentNode, item)
			}
		})
	}
	if v := f["hostnames"]; v != nil {
		p.list(v, join(sp, "hostnames"), func(item *yaml.Node, path string) {
			if s, ok := p.str(item, path); ok {
				r.Hostnames = append(r.Hostnames, s)
			}
		})
	}
	if v := f["rules"]; v != nil {
		p.list(v, join(sp, "rules"), func(item *yaml.Node, path string) {
			r.Rules = append(r.Rules, p.routeRule(r, item, path))
		})
	}
	return r
}

// parentRef parses a parentRef or targetRef; defKind is the kind when
// none is given.
func (p *parser) parentRef(n *yaml.Node, path, defKind string) (model.ParentRef, bool) {
	ref := model.ParentRef{Kind: defKind, Group: "gateway.networking.k8s.io"}
	f := p.fields(n, path, "group", "kind", "name", "namespace", "port", "sectionName")
	if f == nil {
		return ref, false
	}
	ok := true
	if v := f["kind"]; v != nil {
		if s, good := p.str(v, join(path, "kind")); good {
			if s != "Service" && s != "Gateway" {
				p.errorf(v, join(path, "kind"), "%q: only Service and Gateway are supported", s)
				ok = false
			}
			ref.Kind = s
		}
	}
	if ref.Kind == "Service" {
		ref.Group = ""
	}
	if v := f["group"]; v != nil {
		if s, good := p.strOrEmpty(v, join(path, "group")); good {
			want := "gateway.networking.k8s.io"
			if ref.Kind == "Service" {
				want = ""
			}
			if s != want && !(ref.Kind == "Service" && s == "core") {
				p.errorf(v, join(path, "group"), "%q is not the group of a %s (%q)", s, ref.Kind, want)
				ok = false
			}
		}
	}
	if v := f["name"]; v == nil {
		p.errorf(n, join(path, "name"), "missing")
		ok = false
	} else if s, good := p.label(v, join(path, "name")); good {
		ref.Name = s
	} else {
		ok = false
	}
	if v := f["namespace"]; v != nil {
		if s, good := p.label(v, join(path, "namespace")); good {
			ref.Namespace = s
		}
	}
	if v := f["port"]; v != nil {
		if port, good := p.integer(v, join(path, "port"), 1, 65535); good {
			ref.Port = uint16(port)
		}
	}
	if v := f["sectionName"]; v != nil {
		p.str(v, join(path, "sectionName"))
	}
	return ref, ok
}

// strOrEmpty is str, allowing "" (group: "").
func (p *parser) strOrEmpty(n *yaml.Node, path string) (string, bool) {
	if n.Kind == yaml.ScalarNode && n.Value == "" {
		return "", true
	}
	return p.str(n, path)
}

func (p *parser) routeRule(r *route, n *yaml.Node, path string) model.RouteRule {
	var rule model.RouteRule
	keys := []string{"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
	if r.Kind == model.KindGRPCRoute {
		keys = []string{"name", "matches", "filters", "backendRefs", "sessionPersistence"}
	}
	f := p.fields(n, path, keys...)
	if f == nil {
		return rule
	}
	if v := f["name"]; v != nil {
		if s, ok := p.subdomain(v, join(path, "name")); ok {
			rule.Name = s
		}
	}
	if v := f["sessionPersistence"]; v != nil {
		p.errorf(v, join(path, "sessionPersistence"), "not supported")
	}
	if v := f["matches"]; v != nil {
		p.list(v, join(path, "matches"), func(item *yaml.Node, path string) {
			if r.Kind == model.KindGRPCRoute {
				rule.Matches = append(rule.Matches, p.grpcMatch(item, path))
			} else {
				rule.Matches = append(rule.Matches, p.httpMatch(item, path))
			}
		})
	}
	if v := f["filters"]; v != nil {
		rule.Filters = p.filters(r, v, join(path, "filters"))
	}
	if v := f["backendRefs"]; v != nil {
		p.list(v, join(path, "backendRefs"), func(item *yaml.Node, bpath string) {
			b, ok := p.backendRef(r, item, bpath, true)
			if ok {
				rule.BackendRefs = append(rule.BackendRefs, b)
			}
		})
	}
	if v := f["timeouts"]; v != nil {
		t := p.fields(v, join(path, "timeouts"), "request", "backendRequest")
		rule.Timeouts.Request = p.duration(t["request"], join(path, "timeouts.request"))
		rule.Timeouts.BackendRequest = p.duration(t["backendRequest"], join(path, "timeouts.backendRequest"))
		if rule.Timeouts.Request > 0 && rule.Timeouts.BackendRequest > rule.Timeouts.Request {
			p.errorf(v, join(path, "timeouts.backendRequest"), "must not be longer than timeouts.request")
		}
	}
	if v := f["retry"]; v != nil {
		rp := join(path, "retry")
		t := p.fields(v, rp, "codes", "attempts", "backoff")
		rt := &model.RouteRetry{Attempts: -1}
		if c := t["codes"]; c != nil {
			p.list(c, join(rp, "codes"), func(item *yaml.Node, path string) {
				if code, ok := p.integer(item, path, 400, 599); ok {
					rt.Codes = append(rt.Codes, int(code))
				}
			})
		}
		if a := t["attempts"]; a != nil {
			if n, ok := p.integer(a, join(rp, "attempts"), 0, 100); ok {
				rt.Attempts = int(n)
			}
		}
		rt.Backoff = p.duration(t["backoff"], join(rp, "backoff"))
		rule.Retry = rt
	}
	// Rules are kept for backendRef checks after every object is read.
	for i := range rule.BackendRefs {
		_ = i
	}
	return rule
}

// duration parses a Gateway API duration; nil is 0.
func (p *parser) duration(n *yaml.Node, path string) time.Duration {
	if n == nil {
		return 0
	}
	s, ok := p.str(n, path)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(s)
	if !gatewayDuration.MatchString(s) || err != nil {
		p.errorf(n, path, "%q is not a duration (such as 10s, 500ms, 1h30m)", s)
		return 0
	}
	return d
}

var (
	pathTypes   = []string{model.MatchTypeExact, model.MatchTypePathPrefix, model.MatchTypeRegex}
	valueTypes  = []string{model.MatchTypeExact, model.MatchTypeRegex}
	httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

func (p *parser) httpMatch(n *yaml.Node, path string) model.RouteMatch {
	var m model.RouteMatch
	f := p.fields(n, path, "path", "headers", "queryParams", "method")
	if f == nil {
		return m
	}
	if v := f["path"]; v != nil {
		pp := join(path, "path")
		pf := p.fields(v, pp, "type", "value")
		pm := &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/"}
		if t := pf["type"]; t != nil {
			pm.Type = p.enum(t, join(pp, "type"), pathTypes)
		}
		if val := pf["value"]; val != nil {
			if s, ok := p.str(val, join(pp, "value")); ok {
				pm.Value = s
				p.checkPathValue(val, join(pp, "value"), pm)
			}
		}
		m.Path = pm
	}
	m.Headers = p.valueMatches(f["headers"], join(path, "headers"))
	m.QueryParams = p.valueMatches(f["queryParams"], join(path, "queryParams"))
	if v := f["method"]; v != nil {
		m.Method = p.enum(v, join(path, "method"), httpMethods)
	}
	return m
}

func (p *parser) checkPathValue(n *yaml.Node, path string, pm *model.PathMatch) {
	switch pm.Type {
	case model.MatchTypeRegex:
		if _, err := regexp.Compile(pm.Value); err != nil {
			p.errorf(n, path, "%q is not a regular expression: %v", pm.Value, err)
		}
	default:
		if !strings.HasPrefix(pm.Value, "/") {
			p.errorf(n, path, "%q must start with /", pm.Value)
		}
	}
}

func (p *parser) grpcMatch(n *yaml.Node, path string) model.RouteMatch {
	var m model.RouteMatch
	f := p.fields(n, path, "method", "headers")
	if f == nil {
		return m
	}
	if v := f["method"]; v != nil {
		mp := join(path, "method")
		mf := p.fields(v, mp, "type", "service", "method")
		g := &model.GRPCMethodMatch{Type: model.MatchTypeExact}
		if t := mf["type"]; t != nil {
			g.Type = p.enum(t, join(mp, "type"), valueTypes)
		}
		if s := mf["service"]; s != nil {
			g.Service, _ = p.str(s, join(mp, "service"))
		}
		if s := mf["method"]; s != nil {
			g.Method, _ = p.str(s, join(mp, "method"))
		}
		if g.Service == "" && g.Method == "" {
			p.errorf(v, mp, "needs service or method")
		}
		if g.Type == model.MatchTypeRegex {
			for _, s := range []string{g.Service, g.Method} {
				if _, err := regexp.Compile(s); err != nil {
					p.errorf(v, mp, "%q is not a regular expression: %v", s, err)
				}
			}
		}
		m.GRPC = g
	}
	m.Headers = p.valueMatches(f["headers"], join(path, "headers"))
	return m
}

// enum returns the scalar if it is one of values, else reports it.
func (p *parser) enum(n *yaml.Node, path string, values []string) string {
	s, ok := p.str(n, path)
	if !ok {
		return ""
	}
	if !slices.Contains(values, s) {
		p.errorf(n, path, "%q is not one of %s", s, strings.Join(values, ", "))
		return ""
	}
	return s
}

func (p *parser) valueMatches(n *yaml.Node, path string) []model.ValueMatch {
	if n == nil {
		return nil
	}
	var out []model.ValueMatch
	p.list(n, path, func(item *yaml.Node, path string) {
		f := p.fields(item, path, "type", "name", "value")
		if f == nil {
			return
		}
		vm := model.ValueMatch{Type: model.MatchTypeExact}
		if t := f["type"]; t != nil {
			vm.Type = p.enum(t, join(path, "type"), valueTypes)
		}
		if v := f["name"]; v == nil {
			p.errorf(item, join(path, "name"), "missing")
		} else {
			vm.Name, _ = p.str(v, join(path, "name"))
		}
		if v := f["value"]; v == nil {
			p.errorf(item, join(path, "value"), "missing")
		} else if s, ok := p.str(v, join(path, "value")); ok {
			vm.Value = s
			if vm.Type == model.MatchTypeRegex {
				if _, err := regexp.Compile(s); err != nil {
					p.errorf(v, join(path, "value"), "%q is not a regular expression: %v", s, err)
				}
			}
		}
		out = append(out, vm)
	})
	return out
}

func (p *parser) filters(r *route, n *yaml.Node, path string) []model.RouteFilter {
	var out []model.RouteFilter
	types := []string{model.FilterRequestHeaderModifier, model.FilterResponseHeaderModifier, model.FilterRequestRedirect,
		model.FilterURLRewrite, model.FilterRequestMirror}
	if r.Kind == model.KindGRPCRoute {
		types = []string{model.FilterRequestHeaderModifier, model.FilterResponseHeaderModifier, model.FilterRequestMirror}
	}
	p.list(n, path, func(item *yaml.Node, path string) {
		f := p.fields(item, path, "type", "requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite",
			"requestMirror", "extensionRef", "cors", "externalAuth")
		if f == nil {
			return
		}
		tn := f["type"]
		if tn == nil {
			p.errorf(item, join(path, "type"), "missing")
			return
		}
		t := p.enum(tn, join(path, "type"), types)
		rf := model.RouteFilter{Type: t}
		field := map[string]string{model.FilterRequestHeaderModifier: "requestHeaderModifier",
			model.FilterResponseHeaderModifier: "responseHeaderModifier", model.FilterRequestRedirect: "requestRedirect",
			model.FilterURLRewrite: "urlRewrite", model.FilterRequestMirror: "requestMirror"}[t]
		for k, v := range f {
			if k != "type" && k != field {
				p.errorf(v, join(path, k), "does not belong to a filter of type %s", t)
			}
		}
		if t == "" {
			return
		}
		v := f[field]
		if v == nil {
			p.errorf(item, join(path, field), "missing for type %s", t)
			return
		}
		fp := join(path, field)
		switch t {
		case model.FilterRequestHeaderModifier:
			rf.RequestHeaderModifier = p.headerModifier(v, fp)
		case model.FilterResponseHeaderModifier:
			rf.ResponseHeaderModifier = p.headerModifier(v, fp)
		case model.FilterRequestRedirect:
			rf.RequestRedirect = p.requestRedirect(v, fp)
		case model.FilterURLRewrite:
			u := &model.URLRewrite{}
			uf := p.fields(v, fp, "hostname", "path")
			if h := uf["hostname"]; h != nil {
				u.Hostname, _ = p.str(h, join(fp, "hostname"))
			}
			if pn := uf["path"]; pn != nil {
				u.Path = p.pathModifier(pn, join(fp, "path"))
			}
			rf.URLRewrite = u
		case model.FilterRequestMirror:
			m := &model.RequestMirror{Percent: 100}
			mf := p.fields(v, fp, "backendRef", "percent", "fraction")
			if b := mf["backendRef"]; b == nil {
				p.errorf(v, join(fp, "backendRef"), "missing")
			} else if ref, ok := p.backendRef(r, b, join(fp, "backendRef"), false); ok {
				m.Backend = ref
			}
			if pc := mf["percent"]; pc != nil {
				if n, ok := p.integer(pc, join(fp, "percent"), 0, 100); ok {
					m.Percent = int(n)
				}
			}
			if fr := mf["fraction"]; fr != nil {
				p.errorf(fr, join(fp, "fraction"), "not supported; use percent")
			}
			rf.RequestMirror = m
		}
		out = append(out, rf)
	})
	return out
}

func (p *parser) headerModifier(n *yaml.Node, path string) *model.HeaderModifier {
	hm := &model.HeaderModifier{}
	f := p.fields(n, path, "set", "add", "remove")
	for _, k := range []string{"set", "add"} {
		v := f[k]
		if v == nil {
			continue
		}
		p.list(v, join(path, k), func(item *yaml.Node, path string) {
			hf := p.fields(item, path, "name", "value")
			if hf == nil {
				return
			}
			var h model.Header
			if nv := hf["name"]; nv == nil {
				p.errorf(item, join(path, "name"), "missing")
			} else {
				h.Name, _ = p.str(nv, join(path, "name"))
			}
			if vv := hf["value"]; vv != nil {
				h.Value, _ = p.strOrEmpty(vv, join(path, "value"))
			}
			if k == "set" {
				hm.Set = append(hm.Set, h)
			} else {
				hm.Add = append(hm.Add, h)
			}
		})
	}
	if v := f["remove"]; v != nil {
		p.list(v, join(path, "remove"), func(item *yaml.Node, path string) {
			if s, ok := p.str(item, path); ok {
				hm.Remove = append(hm.Remove, s)
			}
		})
	}
	return hm
}

func (p *parser) pathModifier(n *yaml.Node, path string) *model.PathModifier {
	f := p.fields(n, path, "type", "replaceFullPath", "replacePrefixMatch")
	pm := &model.PathModifier{}
	if t := f["type"]; t == nil {
		p.errorf(n, join(path, "type"), "missing")
	} else {
		pm.Type = p.enum(t, join(path, "type"), []string{model.PathReplaceFull, model.PathReplacePrefix})
	}
	key := "replaceFullPath"
	if pm.Type == model.PathReplacePrefix {
		key = "replacePrefixMatch"
	}
	if v := f[key]; v == nil && pm.Type != "" {
		p.errorf(n, join(path, key), "missing for type %s", pm.Type)
	} else if v != nil {
		pm.Value, _ = p.str(v, join(path, key))
	}
	return pm
}

func (p *parser) requestRedirect(n *yaml.Node, path string) *model.RequestRedirect {
	rd := &model.RequestRedirect{}
	f := p.fields(n, path, "scheme", "hostname", "path", "port", "statusCode")
	if v := f["scheme"]; v != nil {
		rd.Scheme = p.enum(v, join(path, "scheme"), []string{"http", "https"})
	}
	if v := f["hostname"]; v != nil {
		rd.Hostname, _ = p.str(v, join(path, "hostname"))
	}
	if v := f["path"]; v != nil {
		rd.Path = p.pathModifier(v, join(path, "path"))
	}
	if v := f["port"]; v != nil {
		if port, ok := p.integer(v, join(path, "port"), 1, 65535); ok {
			rd.Port = uint16(port)
		}
	}
	if v := f["statusCode"]; v != nil {
		if code, ok := p.integer(v, join(path, "statusCode"), 301, 308); ok {
			if !slices.Contains([]int64{301, 302, 303, 307, 308}, code) {
				p.errorf(v, join(path, "statusCode"), "%d is not 301, 302, 303, 307 or 308", code)
			}
			rd.StatusCode = int(code)
		}
	}
	return rd
}

// backendRef parses a backendRef (weighted when weighted is true); the
// reference is checked once every service is known.
func (p *parser) backendRef(r *route, n *yaml.Node, path string, weighted bool) (model.BackendRef, bool) {
	b := model.BackendRef{Weight: 1}
	keys := []string{"group", "kind", "name", "namespace", "port"}
	if weighted {
		keys = append(keys, "weight", "filters")
	}
	f := p.fields(n, path, keys...)
	if f == nil {
		return b, false
	}
	ok := true
	if v := f["kind"]; v != nil {
		if s, good := p.str(v, join(path, "kind")); good && s != "Service" {
			p.errorf(v, join(path, "kind"), "%q: only Service backends are supported", s)
			ok = false
		}
	}
	if v := f["group"]; v != nil {
		if s, good := p.strOrEmpty(v, join(path, "group")); good && s != "" && s != "core" {
			p.errorf(v, join(path, "group"), "%q is not the group of a Service (\"\")", s)
			ok = false
		}
	}
	if v := f["name"]; v == nil {
		p.errorf(n, join(path, "name"), "missing")
		ok = false
	} else if s, good := p.label(v, join(path, "name")); good {
		b.Name = s
	} else {
		ok = false
	}
	if v := f["namespace"]; v != nil {
		if s, good := p.label(v, join(path, "namespace")); good {
			b.Namespace = s
		}
	}
	if v := f["port"]; v == nil {
		p.errorf(n, join(path, "port"), "missing (a Service backend needs its port)")
		ok = false
	} else if port, good := p.integer(v, join(path, "port"), 1, 65535); good {
		b.Port = uint16(port)
	} else {
		ok = false
	}
	if v := f["weight"]; v != nil {
		if w, good := p.integer(v, join(path, "weight"), 0, 1000000); good {
			b.Weight = int(w)
		}
	}
	if v := f["filters"]; v != nil {
		b.Filters = p.filters(r, v, join(path, "filters"))
	}
	if ok {
		r.backends = append(r.backends, backendNode{ref: &model.BackendRef{Name: b.Name, Namespace: b.Namespace, Port: b.Port}, node: n, path: path})
	}
	return b, ok
}

// virtualService is a parsed VirtualService.
type virtualService struct {
	model.VirtualService
	path     string
	nameNode *yaml.Node
}

func (p *parser) virtualService(n *yaml.Node, path string) *virtualService {
	vs := &virtualService{path: path}
	var spec *yaml.Node
	vs.Name, vs.Namespace, _, vs.nameNode, spec = p.object(n, path, "VirtualService", vsAPIVersions)
	if spec == nil {
		return vs
	}
	sp := join(path, "spec")
	f := p.fields(spec, sp, "hosts", "gateways", "http", "tcp", "tls", "exportTo")
	if f == nil {
		return vs
	}
	for _, k := range []string{"gateways", "tcp", "tls"} {
		if v := f[k]; v != nil {
			p.errorf(v, join(sp, k), "not supported: kmesh-waypoint reads fault injection (http[].fault) only")
		}
	}
	if v := f["exportTo"]; v != nil {
		p.list(v, join(sp, "exportTo"), func(item *yaml.Node, path string) { p.str(item, path) })
	}
	if v := f["hosts"]; v == nil {
		p.errorf(spec, join(sp, "hosts"), "missing")
	} else {
		p.list(v, join(sp, "hosts"), func(item *yaml.Node, path string) {
			if s, ok := p.str(item, path); ok {
				vs.Hosts = append(vs.Hosts, s)
			}
		})
	}
	if v := f["http"]; v != nil {
		p.list(v, join(sp, "http"), func(item *yaml.Node, path string) {
			vs.HTTP = append(vs.HTTP, p.vsHTTP(vs, item, path))
		})
	}
	return vs
}

func (p *parser) vsHTTP(vs *virtualService, n *yaml.Node, path string) model.VirtualServiceHTTP {
	var h model.VirtualServiceHTTP
	f := p.fields(n, path, "name", "match", "route", "fault", "timeout", "retries")
	if f == nil {
		return h
	}
	if v := f["name"]; v != nil {
		h.Name, _ = p.str(v, join(path, "name"))
	}
	for _, k := range []string{"timeout", "retries"} {
		if v := f[k]; v != nil {
			p.errorf(v, join(path, k), "not supported here: set timeouts and retry on the HTTPRoute")
		}
	}
	if v := f["route"]; v != nil {
		// Routing comes from HTTPRoutes; a route naming the service itself
		// (which Istio's validation requires) is accepted.
		p.list(v, join(path, "route"), func(item *yaml.Node, path string) {
			rf := p.fields(item, path, "destination", "weight", "headers")
			if d := rf["destination"]; d != nil {
				df := p.fields(d, join(path, "destination"), "host", "port", "subset")
				if hn := df["host"]; hn != nil {
					if s, ok := p.str(hn, join(path, "destination.host")); ok && !slices.Contains(vs.Hosts, s) {
						p.errorf(hn, join(path, "destination.host"), "%q: routes to other hosts are not supported; use an HTTPRoute", s)
					}
				}
				if sn := df["subset"]; sn != nil {
					p.errorf(sn, join(path, "destination.subset"), "subsets are not supported; use an HTTPRoute with backendRefs")
				}
			}
		})
	}
	if v := f["match"]; v != nil {
		p.list(v, join(path, "match"), func(item *yaml.Node, path string) {
			mf := p.fields(item, path, "name", "uri", "method", "headers")
			if mf == nil {
				return
			}
			var m model.VirtualServiceMatch
			if u := mf["uri"]; u != nil {
				m.URI = p.istioStringMatch(u, join(path, "uri"))
			}
			if u := mf["method"]; u != nil {
				m.Method = p.istioStringMatch(u, join(path, "method"))
			}
			if hv := mf["headers"]; hv != nil {
				p.pairs(hv, join(path, "headers"), func(k, v *yaml.Node) {
					sm := p.istioStringMatch(v, join(path, "headers."+k.Value))
					if sm != nil {
						m.Headers = append(m.Headers, model.ValueMatch{Type: sm.Type, Name: k.Value, Value: sm.Value})
					}
				})
			}
			h.Match = append(h.Match, m)
		})
	}
	if v := f["fault"]; v != nil {
		h.Fault = p.fault(v, join(path, "fault"))
	}
	return h
}

// istioStringMatch parses {exact|prefix|regex: value}.
func (p *parser) istioStringMatch(n *yaml.Node, path string) *model.PathMatch {
	f := p.fields(n, path, "exact", "prefix", "regex")
	if len(f) != 1 {
		if f != nil {
			p.errorf(n, path, "needs exactly one of exact, prefix, regex")
		}
		return nil
	}
	for k, v := range f {
		s, ok := p.str(v, join(path, k))
		if !ok {
			return nil
		}
		switch k {
		case "exact":
			return &model.PathMatch{Type: model.MatchTypeExact, Value: s}
		case "prefix":
			return &model.PathMatch{Type: model.MatchTypePathPrefix, Value: s}
		default:
			if _, err := regexp.Compile(s); err != nil {
				p.errorf(v, join(path, k), "%q is not a regular expression: %v", s, err)
				return nil
			}
			return &model.PathMatch{Type: model.MatchTypeRegex, Value: s}
		}
	}
	return nil
}

func (p *parser) fault(n *yaml.Node, path string) *model.Fault {
	f := p.fields(n, path, "delay", "abort")
	if f == nil {
		return nil
	}
	fault := &model.Fault{}
	if v := f["delay"]; v != nil {
		dp := join(path, "delay")
		df := p.fields(v, dp, "fixedDelay", "percentage", "percent")
		d := &model.FaultDelay{Percent: 100}
		if fd := df["fixedDelay"]; fd == nil {
			p.errorf(v, join(dp, "fixedDelay"), "missing")
		} else if s, ok := p.str(fd, join(dp, "fixedDelay")); ok {
			dur, err := time.ParseDuration(s)
			if err != nil || dur < time.Millisecond {
				p.errorf(fd, join(dp, "fixedDelay"), "%q is not a duration of at least 1ms", s)
			}
			d.Fixed = dur
		}
		d.Percent = p.percentage(df, dp, d.Percent)
		fault.Delay = d
	}
	if v := f["abort"]; v != nil {
		ap := join(path, "abort")
		af := p.fields(v, ap, "httpStatus", "grpcStatus", "percentage")
		a := &model.FaultAbort{Percent: 100}
		switch hs, gs := af["httpStatus"], af["grpcStatus"]; {
		case hs != nil && gs != nil:
			p.errorf(v, ap, "httpStatus and grpcStatus are exclusive")
		case hs != nil:
			if code, ok := p.integer(hs, join(ap, "httpStatus"), 200, 599); ok {
				a.HTTPStatus = int(code)
			}
		case gs != nil:
			if s, ok := p.str(gs, join(ap, "grpcStatus")); ok {
				if !grpcStatusNames[s] {
					p.errorf(gs, join(ap, "grpcStatus"), "%q is not a gRPC status name (such as UNAVAILABLE)", s)
				}
				a.GRPCStatus = s
				a.HTTPStatus = 200
			}
		default:
			p.errorf(v, ap, "needs httpStatus or grpcStatus")
		}
		a.Percent = p.percentage(af, ap, a.Percent)
		fault.Abort = a
	}
	return fault
}

var grpcStatusNames = map[string]bool{"OK": true, "CANCELLED": true, "UNKNOWN": true, "INVALID_ARGUMENT": true,
	"DEADLINE_EXCEEDED": true, "NOT_FOUND": true, "ALREADY_EXISTS": true, "PERMISSION_DENIED": true,
	"RESOURCE_EXHAUSTED": true, "FAILED_PRECONDITION": true, "ABORTED": true, "OUT_OF_RANGE": true,
	"UNIMPLEMENTED": true, "INTERNAL": true, "UNAVAILABLE": true, "DATA_LOSS": true, "UNAUTHENTICATED": true}

// percentage reads percentage.value (or the older integer percent).
func (p *parser) percentage(f map[string]*yaml.Node, path string, def float64) float64 {
	if v := f["percentage"]; v != nil {
		pf := p.fields(v, join(path, "percentage"), "value")
		if val := pf["value"]; val != nil {
			x, err := strconv.ParseFloat(val.Value, 64)
			if val.Kind != yaml.ScalarNode || err != nil || x < 0 || x > 100 {
				p.errorf(val, join(path, "percentage.value"), "%q is not a percentage 0..100", val.Value)
				return def
			}
			return x
		}
	}
	if v := f["percent"]; v != nil {
		if n, ok := p.integer(v, join(path, "percent"), 0, 100); ok {
			return float64(n)
		}
	}
	return def
}

// checkL7 reports L7 objects defined twice, routes whose parents or
// backends do not exist and services and workloads naming a missing
// waypoint; it runs after every object is read.
func (p *parser) checkL7(gws []*gateway, routes []*route, vss []*virtualService, services []*service, workloads []*workload) {
	gwFirst := map[string]*gateway{}
	for _, g := range gws {
		if g.nameNode == nil {
			continue
		}
		if prev, dup := gwFirst[g.Key()]; dup {
			p.errorf(g.nameNode, join(g.path, "metadata.name"), "gateway %s is defined twice (first at %s)", g.Key(), prev.path)
			continue
		}
		gwFirst[g.Key()] = g
	}
	svcs := map[string]*service{}
	for _, s := range services {
		svcs[s.Key()] = s
	}
	routeFirst := map[string]*route{}
	for _, r := range routes {
		if r.nameNode != nil {
			if prev, dup := routeFirst[r.Key()]; dup {
				p.errorf(r.nameNode, join(r.path, "metadata.name"), "%s %s/%s is defined twice (first at %s)", r.Kind, r.Namespace, r.Name, prev.path)
			} else {
				routeFirst[r.Key()] = r
			}
		}
		for i, ref := range r.ParentRefs {
			ns := ref.Namespace
			if ns == "" {
				ns = r.Namespace
			}
			switch ref.Kind {
			case "Service":
				s := svcs[ns+"/"+ref.Name]
				if s == nil {
					p.errorf(r.parentNode[i], r.path+".spec.parentRefs", "service %s/%s does not exist", ns, ref.Name)
				} else if ref.Port != 0 && !slices.ContainsFunc(s.Ports, func(sp model.ServicePort) bool { return sp.Port == ref.Port }) {
					p.errorf(r.parentNode[i], r.path+".spec.parentRefs", "service %s/%s has no port %d", ns, ref.Name, ref.Port)
				}
			case "Gateway":
				p.errorf(r.parentNode[i], r.path+".spec.parentRefs", "Gateway parents are not supported: a mesh route names its Service (GAMMA)")
			}
		}
		for _, b := range r.backends {
			ns := b.ref.Namespace
			if ns == "" {
				ns = r.Namespace
			}
			s := svcs[ns+"/"+b.ref.Name]
			if s == nil {
				p.errorf(b.node, b.path, "service %s/%s does not exist", ns, b.ref.Name)
			} else if !slices.ContainsFunc(s.Ports, func(sp model.ServicePort) bool { return sp.Port == b.ref.Port }) {
				p.errorf(b.node, b.path, "service %s/%s has no port %d", ns, b.ref.Name, b.ref.Port)
			}
		}
	}
	vsFirst := map[string]*virtualService{}
	for _, vs := range vss {
		if vs.nameNode == nil {
			continue
		}
		if prev, dup := vsFirst[vs.Key()]; dup {
			p.errorf(vs.nameNode, join(vs.path, "metadata.name"), "virtual service %s is defined twice (first at %s)", vs.Key(), prev.path)
			continue
		}
		vsFirst[vs.Key()] = vs
	}
	for _, s := range services {
		if key := s.UsesWaypoint(); key != "" && gwFirst[key] == nil && s.labelsLine != 0 {
			p.errorAt(s.labelsLine, join(s.path, "labels"), "%s: waypoint %s is not in gateways", model.LabelUseWaypoint, key)
		}
	}
	for _, w := range workloads {
		if key := w.UsesWaypoint(); key != "" && gwFirst[key] == nil && w.labelsLine != 0 {
			p.errorAt(w.labelsLine, join(w.path, "labels"), "%s: waypoint %s is not in gateways", model.LabelUseWaypoint, key)
		}
	}
}
