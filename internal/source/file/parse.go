package file

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Parse decodes and validates a config file. name is used in error messages
// (the file path). When node is non-empty, every workload on that node that
// names a netns must have that path existing.
//
// Services and workloads keep the file's order; each service's endpoints are
// sorted by workload key. The result always passes [model.Mesh.Validate].
func Parse(name string, data []byte, node string) (*model.Mesh, error) {
	root, err := decode(data, nil)
	if err != nil {
		return nil, syntaxError(name, data, err)
	}
	p := newParser(name, node, len(data))
	m := &model.Mesh{}
	if root != nil {
		p.mesh(root, m)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	// Parse checks everything Validate does, with positions; this catches
	// the day the two drift apart.
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

// decode returns the root node of the file's only document, or nil if the
// file is empty or null. The nodes are in a when fastDecode can read the
// file (nil: new ones).
func decode(data []byte, a *nodeArena) (*yaml.Node, error) {
	if root, ok := fastDecode(data, a); ok {
		return root, nil
	}
	return yamlDecode(data)
}

// yamlDecode is decode by yaml.v3 alone.
func yamlDecode(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	default:
		// Silently ignoring the rest would drop half of a concatenated config.
		return nil, fmt.Errorf("yaml: line %d: a second YAML document is not supported", next.Line)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil, nil
	}
	return root, nil
}

var (
	yamlLine      = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
	unknownAnchor = regexp.MustCompile(`(?s)^unknown anchor '(.*)' referenced$`)
)

// syntaxError rewrites yaml's "yaml: line N: msg" as "name:N: msg", the
// form of every other error, and finds the line where yaml gives none.
func syntaxError(name string, data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", name, m[1], m[2])
	}
	if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			return fmt.Errorf("%s:%d: unknown anchor %q", name, lineAt(data, i), m[1])
		}
	}
	// yaml's reader reports bad characters with no position; yaml's scanner
	// and parser leave the line out when it is the first.
	line := 1
	if i := badChar(data); i >= 0 {
		line = lineAt(data, i)
	}
	return fmt.Errorf("%s:%d: %s", name, line, msg)
}

// lineAt returns the line number of byte offset i.
func lineAt(data []byte, i int) int { return 1 + bytes.Count(data[:i], []byte("\n")) }

// badChar returns the offset of the first character yaml's reader refuses
// (invalid UTF-8, or a control character outside YAML's printable set), or -1.
func badChar(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		printable := r == '\t' || r == '\n' || r == '\r' || (r >= 0x20 && r <= 0x7e) || r == 0x85 ||
			(r >= 0xa0 && r <= 0xd7ff) || (r >= 0xe000 && r <= 0xfffd) || (r >= 0x10000 && r <= 0x10ffff)
		if (r == utf8.RuneError && size <= 1) || !printable {
			return i
		}
		i += size
	}
	return -1
}

// service is a parsed service with the lines that cross-checks point at.
// A directory keeps every file's parsed items, so they keep lines, not
// yaml nodes: a node holds its value, tag and children (the node tree of
// the names of 100,000 workloads is ~30 MB).
type service struct {
	model.Service
	key       string // Key(), made once: the directory's indexes share it
	file      string // in a directory, the file that defines it (dir.swap)
	path      string
	nameLine  int      // 0 if the name is missing or invalid
	addrLines []int    // one per Addresses entry
	addrPaths []string // one per Addresses entry
	selector  map[string]string
	// labelsLine is where the labels are, for the waypoint check (0: none).
	labelsLine int
}

// workload is a parsed workload with the line that cross-checks point at.
// In a directory, once a mesh is built, it points at the mesh's copy (see
// dir.whole): its Policies are then the mesh's, which the parse leaves
// out and build sets again.
type workload struct {
	*model.Workload
	key      string // Key(), made once: the directory's indexes share it
	file     string // in a directory, the file that defines it (dir.swap)
	path     string
	nameLine int // 0 if the name is missing or invalid
	// labelsLine is where the labels are, for the waypoint check (0: none).
	labelsLine int
}

// mesh walks the root mapping into m, recording every problem in p.
func (p *parser) mesh(root *yaml.Node, m *model.Mesh) {
	pt := p.items(root, nil)
	if len(p.errs) > 0 {
		return
	}
	pt.build(m)
}

// part is the items of one file, each checked alone and against the
// others of the file (and, for routes, against the services of other
// files); build joins parts into a mesh.
type part struct {
	services  []*service
	workloads []*workload
	policies  []*policy
	gateways  []*gateway
	routes    []*route
	vss       []*virtualService
	peerAuths []*peerAuth
}

// items walks the root mapping into a part, recording every problem in p.
// external, when set, returns the services of other files, which routes
// may name.
func (p *parser) items(root *yaml.Node, external func() []*service) *part {
	f := p.fields(root, "", "services", "workloads", "authorizationPolicies", "gateways", "httpRoutes", "grpcRoutes",
		"virtualServices", "peerAuthentications")
	var services []*service
	var workloads []*workload
	var policies []*policy
	var gateways []*gateway
	var routes []*route
	var vss []*virtualService
	var peerAuths []*peerAuth
	if n := f["gateways"]; n != nil {
		p.list(n, "gateways", func(item *yaml.Node, path string) { gateways = append(gateways, p.gateway(item, path)) })
	}
	for _, k := range []struct {
		key  string
		kind model.RouteKind
	}{{"httpRoutes", model.KindHTTPRoute}, {"grpcRoutes", model.KindGRPCRoute}} {
		if n := f[k.key]; n != nil {
			p.list(n, k.key, func(item *yaml.Node, path string) { routes = append(routes, p.route(item, path, k.kind)) })
		}
	}
	if n := f["virtualServices"]; n != nil {
		p.list(n, "virtualServices", func(item *yaml.Node, path string) { vss = append(vss, p.virtualService(item, path)) })
	}
	if n := f["services"]; n != nil {
		p.list(n, "services", func(item *yaml.Node, path string) {
			s := p.service(item, path)
			s.key = s.Key()
			services = append(services, s)
		})
	}
	if n := f["workloads"]; n != nil {
		p.list(n, "workloads", func(item *yaml.Node, path string) {
			w := p.workload(item, path)
			w.key = w.Key()
			workloads = append(workloads, w)
		})
	}
	if n := f["authorizationPolicies"]; n != nil {
		p.list(n, "authorizationPolicies", func(item *yaml.Node, path string) {
			policies = append(policies, p.authorizationPolicy(item, path))
		})
	}
	if n := f["peerAuthentications"]; n != nil {
		p.list(n, "peerAuthentications", func(item *yaml.Node, path string) {
			peerAuths = append(peerAuths, p.peerAuthentication(item, path))
		})
	}
	p.checkWorkloads(workloads)
	p.checkServices(services)
	p.checkPolicies(policies)
	var ext []*service
	if len(routes) > 0 && external != nil {
		ext = external()
	}
	p.checkL7(gateways, routes, vss, append(ext, services...), workloads)
	p.checkPeerAuths(peerAuths)
	return &part{services, workloads, policies, gateways, routes, vss, peerAuths}
}

// workloadKey is the key of m.Workloads[i], shared with the parsed item's
// when build started from an empty mesh (m.Workloads[i] is workloads[i]).
func workloadKey(workloads []*workload, built []model.Workload, i int) string {
	if len(workloads) == len(built) && workloads[i].key != "" {
		return workloads[i].key
	}
	return built[i].Key()
}

// build joins the items into m: endpoints and policies by selector.
func (pt *part) build(m *model.Mesh) {
	pt.buildWorkloads(m)
	pt.join(m, nil)
}

// buildWorkloads is build's first step: m.Workloads, without policies.
func (pt *part) buildWorkloads(m *model.Mesh) {
	m.Workloads = slices.Grow(m.Workloads, len(pt.workloads))
	for _, w := range pt.workloads {
		mw := *w.Workload
		mw.Policies = nil // selectPolicies and convertPeerAuths add them
		m.Workloads = append(m.Workloads, mw)
	}
}

// join is the rest of build, once buildWorkloads has filled m.Workloads:
// it reads the parsed workloads' keys, never their Workload, and writes
// nothing of m.Workloads but their Policies. selectKeys, when set, appends
// to into the keys of the workloads a service's selector matches, sorted,
// from an index the caller keeps of the same workloads (a directory's);
// nil: join indexes m.Workloads itself.
func (pt *part) join(m *model.Mesh, selectKeys func(namespace string, selector map[string]string, into []string) []string) {
	services, workloads, policies := pt.services, pt.workloads, pt.policies
	gateways, routes, vss, peerAuths := pt.gateways, pt.routes, pt.vss, pt.peerAuths
	for _, g := range gateways {
		m.Gateways = append(m.Gateways, g.Gateway)
	}
	for _, r := range routes {
		m.Routes = append(m.Routes, r.Route)
	}
	for _, vs := range vss {
		m.VirtualServices = append(m.VirtualServices, vs.VirtualService)
	}
	// The part stays as parsed (a directory's parts are built again).
	policies = slices.DeleteFunc(slices.Clone(policies), func(pol *policy) bool {
		if pol.notEnforced == "" {
			return false
		}
		m.UnenforcedPolicies = append(m.UnenforcedPolicies, model.UnenforcedPolicy{
			Name: pol.Name, Namespace: pol.Namespace, Action: "custom", Reason: pol.notEnforced})
		return true
	})
	var labels *model.LabelIndex
	if selectKeys == nil || len(policies) > 0 {
		labels = model.NewLabelIndex(m.Workloads)
	}
	selectPolicies(policies, m.Workloads, labels)
	for _, pol := range policies {
		if pol.waypoint != nil {
			m.WaypointPolicies = append(m.WaypointPolicies, *pol.waypoint)
			continue
		}
		m.Policies = append(m.Policies, pol.Policy)
	}
	m.Policies = append(m.Policies, convertPeerAuths(peerAuths, m.Workloads)...)
	m.Services = slices.Grow(m.Services, len(services))
	var keys []string // selectKeys' answer, reused
	for _, s := range services {
		ms := s.Service
		if selectKeys != nil {
			// The mesh keeps the endpoints: a slice of their exact
			// length, not what appending one at a time grows to.
			keys = selectKeys(s.Namespace, s.selector, keys[:0])
			ms.Endpoints = append(make([]model.Endpoint, 0, len(ms.Endpoints)+len(keys)), ms.Endpoints...)
			for _, k := range keys {
				ms.Endpoints = append(ms.Endpoints, model.Endpoint{Workload: k})
			}
		} else {
			ms.Endpoints = slices.Clone(ms.Endpoints)
			for _, i := range labels.Select(s.Namespace, s.selector) {
				ms.Endpoints = append(ms.Endpoints, model.Endpoint{Workload: workloadKey(workloads, m.Workloads, i)})
			}
		}
		slices.SortFunc(ms.Endpoints, func(a, b model.Endpoint) int { return strings.Compare(a.Workload, b.Workload) })
		m.Services = append(m.Services, ms)
	}
}

func (p *parser) service(n *yaml.Node, path string) *service {
	s := &service{path: path}
	s.Namespace = "default"
	s.LBMode = model.LBRandom
	f := p.itemFields("service", n, path, "name", "namespace", "addresses", "ports", "selector", "loadBalancing", "sessionAffinity", "outlierDetection", "labels")
	if f == nil {
		return s
	}
	if v := f["name"]; v == nil {
		p.errorf(n, join(path, "name"), "missing")
	} else if name, ok := p.label(v, join(path, "name")); ok {
		s.Name, s.nameLine = name, v.Line
	}
	if v := f["namespace"]; v != nil {
		if ns, ok := p.label(v, join(path, "namespace")); ok {
			s.Namespace = p.share(ns)
		} else {
			s.nameLine = 0 // without a namespace the key is unknown: skip the duplicate check
		}
	}
	if v := f["addresses"]; v == nil {
		p.errorf(n, join(path, "addresses"), "missing")
	} else {
		p.serviceAddresses(s, v, join(path, "addresses"))
	}
	if v := f["ports"]; v == nil {
		p.errorf(n, join(path, "ports"), "missing")
	} else {
		p.ports(s, v, join(path, "ports"))
	}
	if v := f["selector"]; v != nil {
		s.selector = p.sharedLabels(v, path, "selector", false)
	}
	if v := f["labels"]; v != nil {
		s.Labels = p.sharedLabels(v, path, "labels", true)
		s.labelsLine = v.Line
	}
	if v := f["loadBalancing"]; v != nil {
		p.loadBalancing(s, v, join(path, "loadBalancing"))
	}
	if v := f["sessionAffinity"]; v != nil {
		p.sessionAffinity(s, v, join(path, "sessionAffinity"))
	}
	if v := f["outlierDetection"]; v != nil {
		p.outlierDetection(s, v, join(path, "outlierDetection"))
	}
	return s
}

func (p *parser) serviceAddresses(s *service, n *yaml.Node, path string) {
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		p.errorf(n, path, "at least one address is required")
		return
	}
	lines := map[netip.Addr]int{} // address -> line, to report one given twice
	p.list(n, path, func(item *yaml.Node, path string) {
		a, ok := p.address(item, path)
		if !ok {
			return
		}
		if line, dup := lines[a]; dup {
			p.errorf(item, path, "%s is listed twice (first at line %d)", a, line)
			return
		}
		lines[a] = item.Line
		s.Addresses = append(s.Addresses, a)
		s.addrLines = append(s.addrLines, item.Line)
		s.addrPaths = append(s.addrPaths, path)
	})
}

func (p *parser) ports(s *service, n *yaml.Node, path string) {
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		p.errorf(n, path, "at least one port is required")
		return
	}
	lines := map[uint16]int{} // port -> line, to report a port given twice
	p.list(n, path, func(item *yaml.Node, path string) {
		f := p.fields(item, path, "port", "targetPort", "protocol", "appProtocol", "name")
		if f == nil {
			return
		}
		sp := model.ServicePort{Protocol: model.ProtocolTCP}
		ok := true
		if v := f["port"]; v == nil {
			p.errorf(item, join(path, "port"), "missing")
			ok = false
		} else if port, good := p.integer(v, join(path, "port"), 1, 65535); !good {
			ok = false
		} else if line, dup := lines[uint16(port)]; dup {
			p.errorf(v, join(path, "port"), "port %d is listed twice (first at line %d)", port, line)
			ok = false
		} else {
			sp.Port, sp.TargetPort = uint16(port), uint16(port)
			lines[sp.Port] = v.Line
		}
		if v := f["targetPort"]; v != nil {
			if port, good := p.integer(v, join(path, "targetPort"), 1, 65535); good {
				sp.TargetPort = uint16(port)
			} else {
				ok = false
			}
		}
		if v := f["name"]; v != nil {
			p.str(v, join(path, "name"))
		}
		if v := f["appProtocol"]; v != nil {
			if ap, good := p.str(v, join(path, "appProtocol")); good {
				sp.AppProtocol = ap
			}
		}
		if v := f["protocol"]; v != nil {
			if proto, good := p.str(v, join(path, "protocol")); !good {
				ok = false
			} else if model.Protocol(proto) != model.ProtocolTCP {
				p.errorf(v, join(path, "protocol"), "unsupported protocol %q (only %s)", proto, model.ProtocolTCP)
				ok = false
			}
		}
		if ok {
			s.Ports = append(s.Ports, sp)
		}
	})
}

func (p *parser) workload(n *yaml.Node, path string) *workload {
	w := &workload{Workload: &model.Workload{}, path: path}
	w.Namespace = "default"
	w.ServiceAccount = "default"
	w.Weight = 1
	f := p.itemFields("workload", n, path, "name", "namespace", "labels", "addresses", "node", "netns", "weight", "serviceAccount", "locality", "tunnelProtocol")
	if f == nil {
		return w
	}
	if v := f["name"]; v == nil {
		p.errorf(n, join(path, "name"), "missing")
	} else if name, ok := p.subdomain(v, join(path, "name")); ok {
		w.Name, w.nameLine = name, v.Line
	}
	if v := f["namespace"]; v != nil {
		if ns, ok := p.label(v, join(path, "namespace")); ok {
			w.Namespace = p.share(ns)
		} else {
			w.nameLine = 0 // without a namespace the key is unknown: skip the duplicate check
		}
	}
	if v := f["labels"]; v != nil {
		w.Labels = p.sharedLabels(v, path, "labels", true)
		w.labelsLine = v.Line
	}
	if v := f["addresses"]; v != nil {
		p.workloadAddresses(w, v, path)
	}
	if v := f["node"]; v == nil {
		p.errorf(n, join(path, "node"), "missing")
	} else if node, ok := p.str(v, join(path, "node")); ok {
		if node == "" {
			p.errorf(v, join(path, "node"), "empty")
		}
		w.Node = p.share(node)
	}
	if v := f["netns"]; v != nil {
		p.netns(w, v, join(path, "netns"))
	}
	if v := f["weight"]; v != nil {
		if weight, ok := p.integer(v, join(path, "weight"), 1, model.MaxWeight); ok {
			w.Weight = uint32(weight)
		}
	}
	if v := f["serviceAccount"]; v != nil {
		if sa, ok := p.subdomain(v, join(path, "serviceAccount")); ok {
			w.ServiceAccount = p.share(sa)
		}
	}
	if v := f["locality"]; v != nil {
		p.locality(w, v, join(path, "locality"))
	}
	if v := f["tunnelProtocol"]; v != nil {
		if tp, ok := p.str(v, join(path, "tunnelProtocol")); ok {
			switch model.TunnelProtocol(tp) {
			case model.TunnelHBONE, model.TunnelNone:
				w.TunnelProtocol = model.TunnelProtocol(tp)
			default:
				p.errorf(v, join(path, "tunnelProtocol"), "unknown tunnel protocol %q (want HBONE or NONE)", tp)
			}
		}
	}
	return w
}

// workloadAddresses allows one address per family: the dataplane maps a
// workload to one backend address for each family a service uses.
// workloadAddresses reads a workload's addresses as p.list would, but
// makes "workloads[7].addresses[0]" only for a message: every workload
// has addresses, and the paths were two allocations per workload.
func (p *parser) workloadAddresses(w *workload, n *yaml.Node, workloadPath string) {
	path := func() string { return join(workloadPath, "addresses") }
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path(), "expected a list, got %s", describe(n))
		return
	}
	if !p.spend(n) {
		return
	}
	var v4, v6 int // line of the address of each family, 0 if none yet
	for i, item := range n.Content {
		item = resolve(item)
		itemPath := func() string { return itemPath(path(), i) }
		a, ok := p.addressAt(item, itemPath)
		if !ok {
			continue
		}
		family, first := "IPv6", &v6
		if a.Is4() {
			family, first = "IPv4", &v4
		}
		if *first != 0 {
			p.errorf(item, itemPath(), "second %s address %s (first at line %d); a workload has at most one IPv4 and one IPv6 address",
				family, a, *first)
			continue
		}
		*first = item.Line
		w.Addresses = append(w.Addresses, a)
	}
}

func (p *parser) netns(w *workload, n *yaml.Node, path string) {
	netns, ok := p.str(n, path)
	if !ok {
		return
	}
	if !filepath.IsAbs(netns) {
		p.errorf(n, path, "%q is not an absolute path", netns)
		return
	}
	w.Netns = netns
	// Only this node can see its netns paths; other nodes' kmeshd check theirs.
	// The caller parses node before netns, so w.Node is set.
	if p.node == "" || w.Node != p.node {
		return
	}
	if _, err := os.Stat(netns); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			p.errorf(n, path, "missing netns %s on this node (%s)", netns, p.node)
		} else {
			p.errorf(n, path, "%v", err)
		}
	}
}

// checkWorkloads reports workloads defined twice, at the second one.
// Their keys are made (items).
func (p *parser) checkWorkloads(workloads []*workload) {
	first := make(map[string]*workload, len(workloads))
	for _, w := range workloads {
		if w.nameLine == 0 {
			continue
		}
		if prev, dup := first[w.key]; dup {
			p.errorAt(w.nameLine, join(w.path, "name"), "workload %s is defined twice (first at %s, line %d)",
				w.key, prev.path, prev.nameLine)
			continue
		}
		first[w.key] = w
	}
}

// checkServices reports services defined twice and address:port pairs that
// two services claim, at the second one: the kernel maps a frontend to one
// service only. Their keys are made (items).
func (p *parser) checkServices(services []*service) {
	first := make(map[string]*service, len(services))
	owner := map[netip.AddrPort]*service{}
	for _, s := range services {
		if s.nameLine != 0 {
			if prev, dup := first[s.key]; dup {
				p.errorAt(s.nameLine, join(s.path, "name"), "service %s is defined twice (first at %s, line %d)",
					s.key, prev.path, prev.nameLine)
				continue
			}
			first[s.key] = s
		}
		for i, a := range s.Addresses {
			for _, sp := range s.Ports {
				ap := netip.AddrPortFrom(a, sp.Port)
				if prev, dup := owner[ap]; dup {
					p.errorAt(s.addrLines[i], s.addrPaths[i],
						"%s is already used by service %s (%s)", ap, prev.Key(), prev.path)
					continue
				}
				owner[ap] = s
			}
		}
	}
}
