package model

import (
	"fmt"
	"regexp"
	"time"
)

// Labels and classes that tie services to waypoints, as Istio spells them.
const (
	// LabelUseWaypoint on a service names the Gateway (in the service's
	// namespace) its traffic goes through.
	LabelUseWaypoint = "istio.io/use-waypoint"
	// LabelUseWaypointNamespace names the Gateway's namespace when it is not
	// the service's.
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// LabelWaypointFor on a Gateway says what traffic it serves:
	// service, workload, all or none.
	LabelWaypointFor = "istio.io/waypoint-for"
	// LabelGatewayName on a workload makes it an instance of that Gateway,
	// as istiod finds waypoint pods.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// WaypointClass is the GatewayClass of kmesh-waypoint.
	WaypointClass = "kmesh-waypoint"
	// HBONEPort is the port a waypoint listens on for HBONE.
	HBONEPort = 15008
)

// Gateway is a Gateway API Gateway; with class [WaypointClass] and an HBONE
// listener it is a waypoint.
type Gateway struct {
	Name      string
	Namespace string
	ClassName string
	Labels    map[string]string
	Listeners []GatewayListener
}

// Key is namespace/name.
func (g *Gateway) Key() string { return g.Namespace + "/" + g.Name }

// GatewayListener is one listener of a Gateway.
type GatewayListener struct {
	Name     string
	Port     uint16
	Protocol string
}

// RouteKind is HTTPRoute or GRPCRoute.
type RouteKind string

const (
	KindHTTPRoute RouteKind = "HTTPRoute"
	KindGRPCRoute RouteKind = "GRPCRoute"
)

// Route is a Gateway API HTTPRoute or GRPCRoute. Only routes whose parent is
// a Service (GAMMA) reach a waypoint.
type Route struct {
	Kind       RouteKind
	Name       string
	Namespace  string
	ParentRefs []ParentRef
	Hostnames  []string
	Rules      []RouteRule
}

// Key is kind/namespace/name.
func (r *Route) Key() string { return string(r.Kind) + "/" + r.Namespace + "/" + r.Name }

// ParentRef names what a route attaches to: a Service (Kind "Service",
// group "") or a Gateway. Port 0 means every port.
type ParentRef struct {
	Group     string
	Kind      string
	Name      string
	Namespace string
	Port      uint16
}

// RouteRule is one rule of a route: requests that match any of Matches (or
// every request when there are none) go to BackendRefs after Filters.
type RouteRule struct {
	Name        string
	Matches     []RouteMatch
	Filters     []RouteFilter
	BackendRefs []BackendRef
	// Timeouts are zero when unset.
	Timeouts RouteTimeouts
	// Retry is nil when the rule says nothing; the waypoint then applies
	// Istio's default retry policy.
	Retry *RouteRetry
}

// RouteTimeouts are HTTPRoute's timeouts.request and
// timeouts.backendRequest.
type RouteTimeouts struct {
	Request        time.Duration
	BackendRequest time.Duration
}

// RouteRetry is HTTPRoute's retry (experimental in Gateway API).
type RouteRetry struct {
	Codes    []int
	Attempts int // retries after the first try; -1 when unset
	Backoff  time.Duration
}

// Match types for paths, headers and query parameters.
const (
	MatchTypeExact      = "Exact"
	MatchTypePathPrefix = "PathPrefix"
	MatchTypeRegex      = "RegularExpression"
)

// RouteMatch is HTTPRouteMatch or GRPCRouteMatch: every field that is set
// must match.
type RouteMatch struct {
	Path        *PathMatch
	Headers     []ValueMatch
	QueryParams []ValueMatch
	Method      string
	GRPC        *GRPCMethodMatch
}

// PathMatch matches the request path by Type (Exact, PathPrefix,
// RegularExpression).
type PathMatch struct {
	Type  string
	Value string
}

// ValueMatch matches a header or query parameter by Type (Exact,
// RegularExpression).
type ValueMatch struct {
	Type  string
	Name  string
	Value string
}

// GRPCMethodMatch matches a gRPC call by service and method; either may be
// empty (any).
type GRPCMethodMatch struct {
	Type    string // Exact or RegularExpression
	Service string
	Method  string
}

// Filter types of Gateway API.
const (
	FilterRequestHeaderModifier  = "RequestHeaderModifier"
	FilterResponseHeaderModifier = "ResponseHeaderModifier"
	FilterRequestRedirect        = "RequestRedirect"
	FilterURLRewrite             = "URLRewrite"
	FilterRequestMirror          = "RequestMirror"
)

// RouteFilter is one filter; the field named by Type is set.
type RouteFilter struct {
	Type                   string
	RequestHeaderModifier  *HeaderModifier
	ResponseHeaderModifier *HeaderModifier
	RequestRedirect        *RequestRedirect
	URLRewrite             *URLRewrite
	RequestMirror          *RequestMirror
}

// HeaderModifier sets, adds and removes headers.
type HeaderModifier struct {
	Set    []Header
	Add    []Header
	Remove []string
}

// Header is a name and value.
type Header struct {
	Name  string
	Value string
}

// Path modifier types.
const (
	PathReplaceFull   = "ReplaceFullPath"
	PathReplacePrefix = "ReplacePrefixMatch"
)

// PathModifier rewrites a path: the whole path, or the part a PathPrefix
// match matched.
type PathModifier struct {
	Type  string
	Value string
}

// RequestRedirect answers with a redirect instead of forwarding. Empty
// fields keep the request's value; StatusCode defaults to 302.
type RequestRedirect struct {
	Scheme     string
	Hostname   string
	Path       *PathModifier
	Port       uint16
	StatusCode int
}

// URLRewrite changes the host and path before forwarding.
type URLRewrite struct {
	Hostname string
	Path     *PathModifier
}

// RequestMirror sends a copy of each request to another backend and
// ignores its answer. Percent is 100 when unset.
type RequestMirror struct {
	Backend BackendRef
	Percent int
}

// BackendRef is a Service and port that takes a share of a rule's
// requests in proportion to Weight.
type BackendRef struct {
	Name      string
	Namespace string
	Port      uint16
	Weight    int
	Filters   []RouteFilter
}

// VirtualService carries what kmesh-waypoint reads of Istio's
// VirtualService: fault injection on the hosts it names.
type VirtualService struct {
	Name      string
	Namespace string
	// Hosts are service names as Istio reads them (name, name.namespace,
	// name.namespace.svc.cluster.local).
	Hosts []string
	HTTP  []VirtualServiceHTTP
}

// Key is namespace/name.
func (v *VirtualService) Key() string { return v.Namespace + "/" + v.Name }

// VirtualServiceHTTP is one http[] entry: requests matching any of Match
// (or all, when empty) get Fault.
type VirtualServiceHTTP struct {
	Name  string
	Match []VirtualServiceMatch
	Fault *Fault
}

// VirtualServiceMatch is Istio's HTTPMatchRequest, the parts kept: uri,
// method and headers as Istio StringMatch (Type is Exact, PathPrefix for
// "prefix", or RegularExpression).
type VirtualServiceMatch struct {
	URI     *PathMatch
	Method  *PathMatch
	Headers []ValueMatch
}

// Fault is Istio's HTTPFaultInjection. Percentages are 0..100; a nil part is
// off.
type Fault struct {
	Delay *FaultDelay
	Abort *FaultAbort
}

// FaultDelay delays Percent of requests by Fixed.
type FaultDelay struct {
	Fixed   time.Duration
	Percent float64
}

// FaultAbort answers Percent of requests with HTTPStatus (or, for gRPC,
// GRPCStatus when set) without forwarding them.
type FaultAbort struct {
	HTTPStatus int
	GRPCStatus string
	Percent    float64
}

// L7Policy is an Istio AuthorizationPolicy with targetRefs: it applies in
// the waypoint, to the Gateway (every request through it) or to the
// Services named.
type L7Policy struct {
	Name       string
	Namespace  string
	Action     PolicyAction
	DryRun     bool
	TargetRefs []ParentRef
	// Rules are OR-ed; an ALLOW policy without rules allows nothing, a
	// DENY policy without rules denies nothing (Istio).
	Rules []L7Rule
}

// Key is namespace/name.
func (p *L7Policy) Key() string { return p.Namespace + "/" + p.Name }

// L7Rule matches when each of From (any), To (any) and every When match.
type L7Rule struct {
	From []L7Source
	To   []L7Operation
	When []L7Condition
}

// L7Source is Istio's Source as written: values use Istio's "*"
// prefix/suffix syntax.
type L7Source struct {
	Principals, NotPrincipals       []string
	Namespaces, NotNamespaces       []string
	IPBlocks, NotIPBlocks           []string
	RemoteIPBlocks, NotRemoteIPBlks []string
	RequestPrincipals, NotReqPrinc  []string
}

// L7Operation is Istio's Operation.
type L7Operation struct {
	Hosts, NotHosts     []string
	Ports, NotPorts     []string
	Methods, NotMethods []string
	Paths, NotPaths     []string
}

// L7Condition is one when[] entry.
type L7Condition struct {
	Key       string
	Values    []string
	NotValues []string
}

// UsesWaypoint returns the key (namespace/name) of the Gateway the service
// sends its traffic through, or "".
func (s *Service) UsesWaypoint() string {
	return usesWaypoint(s.Labels, s.Namespace)
}

// UsesWaypoint returns the key (namespace/name) of the Gateway the
// workload's own labels name for traffic to its addresses, or "". The
// Gateway serves it only when it is for workloads ([Mesh.WorkloadWaypoint]).
func (w *Workload) UsesWaypoint() string {
	return usesWaypoint(w.Labels, w.Namespace)
}

// usesWaypoint reads Istio's use-waypoint labels: the Gateway's name, and
// its namespace when it is not the object's own.
func usesWaypoint(labels map[string]string, namespace string) string {
	name := labels[LabelUseWaypoint]
	if name == "" || name == "none" {
		return ""
	}
	ns := labels[LabelUseWaypointNamespace]
	if ns == "" {
		ns = namespace
	}
	return ns + "/" + name
}

// Values of LabelWaypointFor.
const (
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"
)

// WaypointFor is the traffic the Gateway serves as a waypoint: its
// istio.io/waypoint-for label, service when unset, as istiod reads it.
func (g *Gateway) WaypointFor() string {
	if wf := g.Labels[LabelWaypointFor]; wf != "" {
		return wf
	}
	return WaypointForService
}

// ServiceWaypoint returns the key of the waypoint that service traffic
// of s goes through: the Gateway its label names, when that Gateway
// serves services (waypoint-for service or all); else "".
func (m *Mesh) ServiceWaypoint(s *Service) string {
	key := s.UsesWaypoint()
	if key == "" {
		return ""
	}
	if g := m.Gateway(key); g != nil && g.WaypointFor() != WaypointForService && g.WaypointFor() != WaypointForAll {
		return ""
	}
	return key
}

// WorkloadWaypoint returns the key of the waypoint that traffic to w's
// own addresses goes through: the Gateway its label names, when that
// Gateway serves workloads (waypoint-for workload or all); else "".
func (m *Mesh) WorkloadWaypoint(w *Workload) string {
	key := w.UsesWaypoint()
	if key == "" || w.IsWaypoint() {
		return ""
	}
	if g := m.Gateway(key); g == nil || (g.WaypointFor() != WaypointForWorkload && g.WaypointFor() != WaypointForAll) {
		return ""
	}
	return key
}

// Gateway returns the gateway with the key namespace/name, or nil.
func (m *Mesh) Gateway(key string) *Gateway {
	for i := range m.Gateways {
		if m.Gateways[i].Key() == key {
			return &m.Gateways[i]
		}
	}
	return nil
}

// WaypointInstances returns the workloads that are instances of the
// gateway key (labelled gateway-name in its namespace).
func (m *Mesh) WaypointInstances(key string) []*Workload {
	var out []*Workload
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if w.Labels[LabelGatewayName] != "" && w.Namespace+"/"+w.Labels[LabelGatewayName] == key {
			out = append(out, w)
		}
	}
	return out
}

// IsWaypoint reports whether the workload is an instance of a Gateway:
// labelled so (the file), or found to be one by the xDS source.
func (w *Workload) IsWaypoint() bool {
	return w.Labels[LabelGatewayName] != "" || w.WaypointInstanceOf != ""
}

// validateL7 checks what the L7 objects refer to.
func (m *Mesh) validateL7() error {
	gws := map[string]bool{}
	for i := range m.Gateways {
		g := &m.Gateways[i]
		if g.Name == "" {
			return fmt.Errorf("gateway %d: name is empty", i)
		}
		if gws[g.Key()] {
			return fmt.Errorf("gateway %s: defined twice", g.Key())
		}
		gws[g.Key()] = true
	}
	routes := map[string]bool{}
	for i := range m.Routes {
		r := &m.Routes[i]
		if routes[r.Key()] {
			return fmt.Errorf("route %s: defined twice", r.Key())
		}
		routes[r.Key()] = true
		for _, rule := range r.Rules {
			for _, mt := range rule.Matches {
				if mt.Path != nil && mt.Path.Type == MatchTypeRegex {
					if _, err := regexp.Compile(mt.Path.Value); err != nil {
						return fmt.Errorf("route %s: path regex: %w", r.Key(), err)
					}
				}
			}
			for _, b := range rule.BackendRefs {
				if b.Weight < 0 {
					return fmt.Errorf("route %s: backend %s: negative weight", r.Key(), b.Name)
				}
			}
		}
	}
	for i := range m.Services {
		s := &m.Services[i]
		if key := s.UsesWaypoint(); key != "" && !gws[key] {
			return fmt.Errorf("service %s: waypoint %s does not exist", s.Key(), key)
		}
	}
	// A workload checked alone (State.Check) comes without the mesh's
	// gateways; the file source names a missing one with file:line.
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if key := w.UsesWaypoint(); key != "" && !gws[key] && len(m.Gateways) > 0 {
			return fmt.Errorf("workload %s: waypoint %s does not exist", w.Key(), key)
		}
	}
	return nil
}
