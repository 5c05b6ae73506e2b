package waypoint

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/internal/model"
)

// protocol is how a service port's connections are handled.
type protocol string

const (
	protoDetect protocol = "detect" // no appProtocol: sniff the first bytes
	protoHTTP   protocol = "HTTP"   // HTTP/1.1 (h2c prior knowledge is accepted too)
	protoHTTP2  protocol = "HTTP2"  // h2c, gRPC
	protoTCP    protocol = "TCP"
)

// protocolOf maps Kubernetes' appProtocol to how the waypoint handles the
// port, as Istio reads it.
func protocolOf(appProtocol string) protocol {
	switch strings.ToLower(appProtocol) {
	case "":
		return protoDetect
	case "http", "http1", "kubernetes.io/http":
		return protoHTTP
	case "http2", "grpc", "grpc-web", "kubernetes.io/h2c":
		return protoHTTP2
	default: // tcp, tls, mongo, mysql, redis, ...
		return protoTCP
	}
}

// snapshot is one compiled configuration. It is never changed after
// compile: Update swaps in a new one.
type snapshot struct {
	gateway  *model.Gateway
	mesh     *model.Mesh
	byDst    map[netip.AddrPort]*servicePort // VIP:port of services using this waypoint
	byPort   map[uint16][]*servicePort       // the same, by port (plaintext listener)
	services map[string]*service             // every service of the mesh (backends), by key
	byAddr   map[netip.Addr]*model.Workload  // workloads by address (plaintext peer identity)
	byKey    map[string]*model.Workload      // workloads by key (metrics labels)
	// principals are the workloads' principals (principal(w)), made once
	// per config rather than per request.
	principals map[*model.Workload]string
	// gatewayPolicies target the Gateway: every request through it.
	gatewayPolicies []*model.L7Policy
	// workloads are the workloads whose own addresses this waypoint
	// serves (waypoint-for workload or all), by address: a connection to
	// one goes to that workload alone, on the port it was for.
	workloads map[netip.Addr]*service
}

// service is a service of the mesh as a backend, and, when it uses this
// waypoint, as a destination with its routes.
type service struct {
	m         *model.Service
	key       string
	ports     map[uint16]*servicePort
	endpoints []endpoint
	// workload is set when this stands for a workload's own addresses
	// (snapshot.workloads): its one endpoint is the workload, its ports
	// are made per port dialed (portFor).
	workload *model.Workload
	// The fields below are set only for services using this waypoint.
	served   bool
	hosts    []string // names Istio matches in a VirtualService
	faults   []faultRule
	policies []*model.L7Policy
}

// servicePort is one port of a service.
type servicePort struct {
	svc        *service
	port       uint16
	targetPort uint16
	proto      protocol
	// routes are the GAMMA route matches attached to this port, in
	// Gateway API precedence order; routed is false when no route is
	// attached and requests go to the service itself.
	routes []*routeEntry
	routed bool
	// self is the service itself at this port as a backend: where a
	// request goes without routes, and a TCP connection.
	self *backend
	// consumers are GAMMA consumer routes: routes from another namespace
	// than the service's, by that namespace. They apply only to clients of
	// their namespace, and for those clients instead of the producer's
	// routes (Gateway API GEP-1294).
	consumers map[string][]*routeEntry
}

// routesFor returns the routes a client of namespace ns takes on the port,
// and whether any route applies (false: requests go to the service itself).
func (sp *servicePort) routesFor(ns string) ([]*routeEntry, bool) {
	if cr, ok := sp.consumers[ns]; ok {
		return cr, true
	}
	return sp.routes, sp.routed
}

// endpoint is one workload behind a service.
type endpoint struct {
	workload string
	addr     netip.Addr
	weight   int
	identity string // principal, for logs and metrics
}

// compile builds a snapshot of mesh for the gateway key (namespace/name).
func compile(mesh *model.Mesh, gatewayKey string) (*snapshot, error) {
	gw := mesh.Gateway(gatewayKey)
	if gw == nil {
		return nil, fmt.Errorf("gateway %s is not in the config", gatewayKey)
	}
	s := &snapshot{
		gateway:  gw,
		mesh:     mesh,
		byDst:    map[netip.AddrPort]*servicePort{},
		byPort:   map[uint16][]*servicePort{},
		services: map[string]*service{},
		byAddr:   map[netip.Addr]*model.Workload{},

		principals: make(map[*model.Workload]string, len(mesh.Workloads)),
	}
	workloads := map[string]*model.Workload{}
	s.byKey = workloads
	for i := range mesh.Workloads {
		w := &mesh.Workloads[i]
		workloads[w.Key()] = w
		s.principals[w] = principal(w)
		for _, a := range w.Addresses {
			s.byAddr[a] = w
		}
	}
	for i := range mesh.Services {
		ms := &mesh.Services[i]
		svc := &service{m: ms, key: ms.Key(), ports: map[uint16]*servicePort{}}
		for _, p := range ms.Ports {
			sp := &servicePort{svc: svc, port: p.Port, targetPort: p.TargetPort, proto: protocolOf(p.AppProtocol)}
			sp.self = &backend{svc: svc, port: p.Port, weight: 1, name: fmt.Sprintf("%s:%d", svc.key, p.Port)}
			svc.ports[p.Port] = sp
		}
		for _, e := range ms.Endpoints {
			w := workloads[e.Workload]
			if w == nil || len(w.Addresses) == 0 {
				continue
			}
			svc.endpoints = append(svc.endpoints, endpoint{
				workload: w.Key(), addr: pickAddr(w.Addresses, ms.Addresses), weight: int(w.Weight),
				identity: principal(w),
			})
		}
		s.services[svc.key] = svc
		if mesh.ServiceWaypoint(ms) != gatewayKey {
			continue
		}
		svc.served = true
		svc.hosts = []string{ms.Name, ms.Name + "." + ms.Namespace, ms.Name + "." + ms.Namespace + ".svc",
			ms.Name + "." + ms.Namespace + ".svc.cluster.local"}
		for _, a := range ms.Addresses {
			for _, p := range ms.Ports {
				sp := svc.ports[p.Port]
				s.byDst[netip.AddrPortFrom(a, p.Port)] = sp
				if !slices.Contains(s.byPort[p.Port], sp) {
					s.byPort[p.Port] = append(s.byPort[p.Port], sp)
				}
			}
		}
	}
	s.addWorkloads(mesh, gatewayKey)
	for i := range mesh.Routes {
		if err := s.attachRoute(&mesh.Routes[i]); err != nil {
			return nil, fmt.Errorf("route %s: %w", mesh.Routes[i].Key(), err)
		}
	}
	for _, svc := range s.services {
		for _, sp := range svc.ports {
			sortRoutes(sp.routes)
			for _, cr := range sp.consumers {
				sortRoutes(cr)
			}
		}
	}
	for i := range mesh.VirtualServices {
		if err := s.attachVirtualService(&mesh.VirtualServices[i]); err != nil {
			return nil, fmt.Errorf("virtual service %s: %w", mesh.VirtualServices[i].Key(), err)
		}
	}
	for i := range mesh.WaypointPolicies {
		pol := &mesh.WaypointPolicies[i]
		for _, ref := range pol.TargetRefs {
			ns := ref.Namespace
			if ns == "" {
				ns = pol.Namespace
			}
			switch ref.Kind {
			case "Gateway":
				if ns+"/"+ref.Name == gatewayKey {
					s.gatewayPolicies = append(s.gatewayPolicies, pol)
				}
			case "Service":
				if svc := s.services[ns+"/"+ref.Name]; svc != nil && svc.served {
					svc.policies = append(svc.policies, pol)
				}
			}
		}
	}
	return s, nil
}

// addWorkloads adds the workloads that use this waypoint for traffic to
// their own addresses. A port of theirs that a service targets takes that
// service port's protocol (appProtocol); any other is detected.
func (s *snapshot) addWorkloads(mesh *model.Mesh, gatewayKey string) {
	served := map[string]*service{} // by workload key
	for i := range mesh.Workloads {
		w := &mesh.Workloads[i]
		if mesh.WorkloadWaypoint(w) != gatewayKey || len(w.Addresses) == 0 {
			continue
		}
		if s.workloads == nil {
			s.workloads = map[netip.Addr]*service{}
		}
		key := w.Key()
		svc := &service{m: &model.Service{Namespace: w.Namespace, Addresses: w.Addresses}, key: "workload:" + key,
			ports: map[uint16]*servicePort{}, workload: w, served: true}
		// One endpoint per address, each of its own family: workloadPort
		// keeps only the one dialed when there are several.
		for _, a := range w.Addresses {
			svc.endpoints = append(svc.endpoints, endpoint{workload: key, addr: a, weight: 1, identity: s.principals[w]})
			s.workloads[a] = svc
		}
		served[key] = svc
	}
	if len(served) == 0 {
		return
	}
	// One pass over the services' endpoints, not one per served workload.
	for j := range mesh.Services {
		ms := &mesh.Services[j]
		for _, e := range ms.Endpoints {
			svc := served[e.Workload]
			if svc == nil {
				continue
			}
			for _, p := range ms.Ports {
				if _, ok := svc.ports[p.TargetPort]; !ok {
					svc.ports[p.TargetPort] = svc.newPort(p.TargetPort, protocolOf(p.AppProtocol))
				}
			}
		}
	}
}

// newPort is a port of a workload's own address.
func (svc *service) newPort(port uint16, proto protocol) *servicePort {
	sp := &servicePort{svc: svc, port: port, targetPort: port, proto: proto}
	sp.self = &backend{svc: svc, port: port, weight: 1, name: fmt.Sprintf("%s:%d", svc.key, port)}
	return sp
}

// workloadPort returns the port of the workload address dst this waypoint
// serves, or nil. A port no service targets is made for the connection
// (the snapshot never changes).
func (s *snapshot) workloadPort(dst netip.AddrPort) *servicePort {
	svc := s.workloads[dst.Addr()]
	if svc == nil {
		return nil
	}
	if len(svc.endpoints) > 1 {
		// Reach the address dialed, not another of the workload's.
		one := *svc
		one.endpoints = nil
		for _, e := range svc.endpoints {
			if e.addr == dst.Addr() {
				one.endpoints = append(one.endpoints, e)
			}
		}
		one.ports = map[uint16]*servicePort{}
		sp := one.newPort(dst.Port(), protoDetect)
		if known := svc.ports[dst.Port()]; known != nil {
			sp.proto = known.proto
		}
		return sp
	}
	if sp := svc.ports[dst.Port()]; sp != nil {
		return sp
	}
	return svc.newPort(dst.Port(), protoDetect)
}

// pickAddr returns the workload address of the family of the service's
// first address, else the workload's first.
func pickAddr(addrs []netip.Addr, svcAddrs []netip.Addr) netip.Addr {
	if len(svcAddrs) > 0 {
		for _, a := range addrs {
			if a.Is4() == svcAddrs[0].Is4() {
				return a
			}
		}
	}
	return addrs[0]
}

// principal is the workload's identity as policies name it.
// principalNamespace is the namespace of a principal
// (cluster.local/ns/NS/sa/SA), "" if it names none.
func principalNamespace(p string) string {
	_, rest, ok := strings.Cut(p, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

func principal(w *model.Workload) string {
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return "cluster.local/ns/" + w.Namespace + "/sa/" + sa
}

// attachRoute adds the route's matches to the ports of the services it
// names as parents.
func (s *snapshot) attachRoute(r *model.Route) error {
	var rules []*rule
	for i := range r.Rules {
		cr, err := s.compileRule(r, i)
		if err != nil {
			return err
		}
		rules = append(rules, cr)
	}
	for _, ref := range r.ParentRefs {
		if ref.Kind != "Service" {
			continue // a Gateway parent is a north-south route, not ours
		}
		ns := ref.Namespace
		if ns == "" {
			ns = r.Namespace
		}
		svc := s.services[ns+"/"+ref.Name]
		if svc == nil || !svc.served {
			continue
		}
		for _, sp := range svc.ports {
			if ref.Port != 0 && ref.Port != sp.port {
				continue
			}
			var es []*routeEntry
			for _, cr := range rules {
				for mi := range cr.matches {
					es = append(es, &routeEntry{rule: cr, match: cr.matches[mi]})
				}
			}
			if r.Namespace != svc.m.Namespace {
				if sp.consumers == nil {
					sp.consumers = map[string][]*routeEntry{}
				}
				sp.consumers[r.Namespace] = append(sp.consumers[r.Namespace], es...)
				continue
			}
			sp.routed = true
			sp.routes = append(sp.routes, es...)
		}
	}
	return nil
}

// attachVirtualService adds the faults of a VirtualService to the services
// its hosts name.
func (s *snapshot) attachVirtualService(vs *model.VirtualService) error {
	for _, h := range vs.HTTP {
		if h.Fault == nil {
			continue
		}
		fr := faultRule{name: vs.Key(), fault: h.Fault}
		for _, m := range h.Match {
			cm := vsMatch{headers: nil}
			var err error
			if m.URI != nil {
				if cm.uri, err = newStringMatcher(m.URI.Type, m.URI.Value); err != nil {
					return err
				}
			}
			if m.Method != nil {
				if cm.method, err = newStringMatcher(m.Method.Type, m.Method.Value); err != nil {
					return err
				}
			}
			for _, hm := range m.Headers {
				vm, err := newValueMatcher(hm)
				if err != nil {
					return err
				}
				cm.headers = append(cm.headers, vm)
			}
			fr.matches = append(fr.matches, cm)
		}
		for _, host := range vs.Hosts {
			for _, svc := range s.services {
				if svc.served && (svc.m.Namespace == vs.Namespace && host == svc.m.Name || slices.Contains(svc.hosts[1:], host)) {
					svc.faults = append(svc.faults, fr)
				}
			}
		}
	}
	return nil
}

// stringMatcher matches a string exactly, by prefix, or by a regular
// expression that must match the whole string.
type stringMatcher struct {
	kind  string
	value string
	re    *regexp.Regexp
}

func newStringMatcher(kind, value string) (*stringMatcher, error) {
	m := &stringMatcher{kind: kind, value: value}
	if kind == model.MatchTypeRegex {
		re, err := regexp.Compile("^(?:" + value + ")$")
		if err != nil {
			return nil, fmt.Errorf("regular expression %q: %w", value, err)
		}
		m.re = re
	}
	return m, nil
}

func (m *stringMatcher) match(s string) bool {
	switch m.kind {
	case model.MatchTypeRegex:
		return m.re.MatchString(s)
	case model.MatchTypePathPrefix:
		return strings.HasPrefix(s, m.value)
	default:
		return s == m.value
	}
}

// valueMatcher matches a named header or query parameter.
type valueMatcher struct {
	name string
	*stringMatcher
}

func newValueMatcher(v model.ValueMatch) (valueMatcher, error) {
	sm, err := newStringMatcher(v.Type, v.Value)
	return valueMatcher{name: v.Name, stringMatcher: sm}, err
}
