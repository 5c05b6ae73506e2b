// Package model holds the canonical mesh state that every config source
// produces and the dataplane consumes: services, workloads and the endpoints
// that join them. It is plain data with validation and no I/O.
package model

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unique"
)

// LBMode is how a service picks an endpoint for a new connection.
type LBMode string

const (
	// LBRandom picks an endpoint at random, in proportion to its weight.
	LBRandom LBMode = "random"
	// LBRoundRobin cycles through the endpoints, each weight times per cycle.
	LBRoundRobin LBMode = "round_robin"
)

// MaxWeight bounds an endpoint's weight. The kernel expands each endpoint into
// weight slots (after dividing all weights by their common divisor), so the
// bound keeps a service's slot table small.
const MaxWeight = 128

// Protocol is the transport protocol of a service port.
type Protocol string

// ProtocolTCP is the only protocol the connect-time load balancer handles;
// UDP traffic to a service address passes untouched.
const ProtocolTCP Protocol = "TCP"

// Mesh is the whole state a config source hands to the dataplane.
type Mesh struct {
	Services  []Service
	Workloads []Workload
	// Policies are the authorization policies of the mesh (see policy.go),
	// enforced by the data plane at connect and on incoming SYNs (see
	// internal/authz for their meaning).
	Policies []Policy
	// UnenforcedPolicies are valid policies the node does not enforce, as
	// Istio's node proxy does not (CUSTOM actions, which an external
	// authorizer in a waypoint or gateway applies): listed, never in the
	// maps.
	UnenforcedPolicies []UnenforcedPolicy

	// The L7 objects below are read by kmesh-waypoint (see l7.go);
	// kmeshd uses Gateways only to find a service's waypoint.
	Gateways         []Gateway
	Routes           []Route
	VirtualServices  []VirtualService
	WaypointPolicies []L7Policy
}

// Service is a set of addresses and ports that balance over endpoints.
type Service struct {
	Name      string
	Namespace string
	Addresses []netip.Addr
	Ports     []ServicePort
	LBMode    LBMode
	// Labels of the service; istio.io/use-waypoint sends its traffic
	// through a waypoint (see [Service.UsesWaypoint]).
	Labels map[string]string
	// Endpoints are the workloads behind the service. Sources resolve
	// selectors (file) or explicit memberships (xDS) into this list.
	Endpoints []Endpoint

	// Locality, when set, prefers endpoints close to the client (lb.go).
	Locality *LocalityLB
	// SessionAffinity, when set, keeps a client on its endpoint.
	SessionAffinity *SessionAffinity
	// OutlierDetection, when set, ejects endpoints whose connects fail.
	OutlierDetection *OutlierDetection
	// Waypoint, when set, is the waypoint a control plane (xDS) assigned
	// to the service: the source has already pointed Endpoints at it.
	Waypoint *ServiceWaypoint
}

// ServiceWaypoint is a waypoint assigned by the control plane (the
// workload API's waypoint field). The service's Endpoints are the
// waypoint's instances, on the service's own ports (the plaintext
// redirect, as [WithWaypointRedirect] does for the file); when the
// waypoint cannot be resolved, Endpoints is empty so every connect to the
// service is refused, never sent around the waypoint.
type ServiceWaypoint struct {
	// Address is the waypoint as the control plane named it: an IP
	// address or namespace/hostname.
	Address string
	// Unresolved says why the waypoint is not known ("" when it is).
	Unresolved string
	// Workload, when set, is the key of the workload whose own addresses
	// this service stands for (a waypoint for workload traffic,
	// istio.io/waypoint-for workload or all): its one port, 0, is every
	// port, and each connection keeps the port it dialed. Such a
	// connection is carried to a waypoint instance only over HBONE, the
	// workload's address and port as authority; the kernel refuses it
	// when the instance is not reached through the tunnel (no CA), since
	// a plaintext connection to the waypoint would not say which workload
	// it is for. Made by WithWaypointRedirect (file) and the xDS source.
	Workload string
}

// AnyPort reports whether the service is a workload's own address (see
// ServiceWaypoint.Workload): one port 0 that takes every port.
func (s *Service) AnyPort() bool { return s.Waypoint != nil && s.Waypoint.Workload != "" }

// Key is the service's unique name in the mesh: namespace/name.
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort maps a port of the service address to a port of the endpoints.
type ServicePort struct {
	Port       uint16
	TargetPort uint16
	Protocol   Protocol
	// AppProtocol is Kubernetes' appProtocol (http, http2, grpc, tcp, ...);
	// empty lets a waypoint detect the protocol.
	AppProtocol string
}

// Endpoint is one workload serving a service.
type Endpoint struct {
	// Workload is the Key of the workload.
	Workload string
}

// Workload is a pod, VM or process with addresses of its own.
type Workload struct {
	Name      string
	Namespace string
	Labels    map[string]string
	Addresses []netip.Addr
	// Node is the name of the node the workload runs on.
	Node string
	// Netns is the path of the workload's network namespace on its node;
	// the node's kmeshd enrolls it. Empty means not enrolled by kmeshd.
	Netns string
	// Weight is the workload's share of each service it serves (1..MaxWeight).
	Weight uint32

	// ServiceAccount is the workload's identity (its SPIFFE id is
	// spiffe://cluster.local/ns/<namespace>/sa/<service account>); empty
	// means "default", as for a Kubernetes pod.
	ServiceAccount string
	// TunnelProtocol is how other nodes must carry connections to the
	// workload: HBONE (mutual TLS to its port 15008) or NONE (plaintext,
	// one hop). Empty means the default, which TunnelFor resolves.
	TunnelProtocol TunnelProtocol
	// Policies are the keys (namespace/name) of the workload-selector
	// policies that apply to it; namespace and global policies apply by
	// their scope and are not listed. The file source resolves selectors
	// into it; xDS sends it.
	Policies []string

	// The fields below come from the xDS workload API; the file source
	// leaves them empty.

	// UID is the control plane's unique id of the workload
	// (cluster/group/kind/namespace/name for Kubernetes objects).
	UID string
	// Network is the network the workload's addresses belong to; "" is
	// the default network.
	Network string
	// Locality is where the workload runs, for locality-aware balancing.
	Locality Locality
	// Waypoint is the waypoint the control plane gave the workload for
	// traffic to its own address (waypoint-for workload or all). The xDS
	// source sends connections to the workload's addresses to the
	// waypoint's instances (a service standing for the workload,
	// ServiceWaypoint.Workload) and gives the workload a deny policy
	// (kmesh-system/waypoint-not-served-...) that refuses every client
	// but the waypoint's instances, so nothing reaches it around the
	// waypoint.
	Waypoint string
	// WaypointInstanceOf is the waypoint (as the control plane names it:
	// namespace/hostname or address) this workload is an instance of. The
	// xDS source sets it, since the workload API carries no labels: a
	// workload that is an instance of a waypoint some service or workload
	// names. The file source marks instances by LabelGatewayName instead.
	WaypointInstanceOf string
}

// TunnelProtocol is how connections from other nodes reach a workload.
type TunnelProtocol string

const (
	// TunnelNone is plaintext, one hop.
	TunnelNone TunnelProtocol = "NONE"
	// TunnelHBONE is Istio ambient's HBONE: HTTP/2 CONNECT over mutual
	// TLS to the workload's port 15008.
	TunnelHBONE TunnelProtocol = "HBONE"
)

// TunnelFor is the workload's tunnel protocol, resolving the default: a
// workload some kmeshd enrolls (it names a netns) takes HBONE when the mesh
// has a CA, and every other workload NONE.
func (w *Workload) TunnelFor(meshHasCA bool) TunnelProtocol {
	// A waypoint instance from the workload API is reached over HBONE
	// whatever its own tunnel protocol says, as ztunnel does (istiod
	// sends a waypoint pod, which is out of the mesh's capture, without
	// HBONE; the waypoint terminates HBONE itself).
	if meshHasCA && w.WaypointInstanceOf != "" {
		return TunnelHBONE
	}
	if w.TunnelProtocol != "" {
		return w.TunnelProtocol
	}
	if meshHasCA && w.Netns != "" {
		return TunnelHBONE
	}
	return TunnelNone
}

// TunnelledFrom reports whether a client on node reaches w through the
// HBONE tunnel: w takes HBONE and is on another node, or is a waypoint
// instance on this one. A same-node waypoint is reached over HBONE too, as
// Istio ambient does, so it learns the client's identity from its
// certificate and the service from the authority; every other same-node
// workload keeps the direct path.
func (w *Workload) TunnelledFrom(node string, meshHasCA bool) bool {
	return w.TunnelFor(meshHasCA) == TunnelHBONE && (w.Node != node || w.IsWaypoint())
}

// Locality is a workload's place in the region/zone/subzone hierarchy.
// It is interned: one pointer per workload, not three strings (40 bytes
// less in every workload: 4 MB at 100,000 workloads, whose localities are
// a handful of places), and == compares places. The zero Locality is no
// place; NewLocality makes the others.
type Locality struct{ h unique.Handle[place] }

type place struct{ region, zone, subzone string }

// NewLocality returns the place region/zone/subzone (any part may be
// empty; all empty is the zero Locality).
func NewLocality(region, zone, subzone string) Locality {
	if region == "" && zone == "" && subzone == "" {
		return Locality{}
	}
	return Locality{unique.Make(place{region, zone, subzone})}
}

func (l Locality) place() place {
	if l == (Locality{}) {
		return place{}
	}
	return l.h.Value()
}

// Region is the locality's region, "" if none.
func (l Locality) Region() string { return l.place().region }

// Zone is the locality's zone, "" if none.
func (l Locality) Zone() string { return l.place().zone }

// Subzone is the locality's subzone, "" if none.
func (l Locality) Subzone() string { return l.place().subzone }

// localityJSON is how a Locality was written when it was three strings
// (the tunnel's state file carries the mesh as JSON).
type localityJSON struct{ Region, Zone, Subzone string }

// MarshalJSON writes the locality as {"Region":…,"Zone":…,"Subzone":…}.
func (l Locality) MarshalJSON() ([]byte, error) {
	p := l.place()
	return json.Marshal(localityJSON{p.region, p.zone, p.subzone})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *Locality) UnmarshalJSON(b []byte) error {
	var j localityJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = NewLocality(j.Region, j.Zone, j.Subzone)
	return nil
}

// Key is the workload's unique name in the mesh: namespace/name. When the
// UID ends in it (Istio's cluster/group/kind/namespace/name) it is cut from
// the UID: the maps keyed by it (the state, the xDS index, the dataplane)
// then share the UID's memory instead of a new string each (~2.4 MB per
// map at 100,000 workloads).
func (w *Workload) Key() string {
	if k, ok := KeyInUID(w.UID, w.Namespace, w.Name); ok {
		return k
	}
	return w.Namespace + "/" + w.Name
}

// KeyInUID returns the end of uid that is the key namespace/name, if uid
// ends in it after a "/" or is it. The name may still be the bytes of a
// decoded message (the xDS source's wire decoder): no string is made of it.
func KeyInUID[S ~string | ~[]byte](uid, namespace string, name S) (string, bool) {
	n := len(namespace) + 1 + len(name)
	if len(uid) < n || (len(uid) > n && uid[len(uid)-n-1] != '/') {
		return "", false
	}
	key := uid[len(uid)-n:]
	return key, key[:len(namespace)] == namespace && key[len(namespace)] == '/' && key[len(namespace)+1:] == string(name)
}

// Validate checks the references and uniqueness rules that no single item
// can check alone. It returns the first problem found, naming the item.
func (m *Mesh) Validate() error {
	workloads := make(map[string]bool, len(m.Workloads))
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if w.Name == "" {
			return fmt.Errorf("workload %d: name is empty", i)
		}
		// One map operation per workload, not a lookup and an insert: at
		// 500,000 workloads Validate is on the critical path of the
		// first sync, before anything is applied.
		n := len(workloads)
		if workloads[w.Key()] = true; len(workloads) == n {
			return fmt.Errorf("workload %s: defined twice", w.Key())
		}
		if w.Weight < 1 || w.Weight > MaxWeight {
			return fmt.Errorf("workload %s: weight %d out of range 1..%d", w.Key(), w.Weight, MaxWeight)
		}
		for _, a := range w.Addresses {
			if !a.IsValid() || a.Zone() != "" {
				return fmt.Errorf("workload %s: invalid address %q", w.Key(), a)
			}
		}
		switch w.TunnelProtocol {
		case "", TunnelNone, TunnelHBONE:
		default:
			return fmt.Errorf("workload %s: unknown tunnel protocol %q (want HBONE or NONE)", w.Key(), w.TunnelProtocol)
		}
	}
	owner := map[netip.AddrPort]string{}
	services := map[string]bool{}
	for i := range m.Services {
		s := &m.Services[i]
		if s.Name == "" {
			return fmt.Errorf("service %d: name is empty", i)
		}
		if services[s.Key()] {
			return fmt.Errorf("service %s: defined twice", s.Key())
		}
		services[s.Key()] = true
		switch s.LBMode {
		case LBRandom, LBRoundRobin, LBMaglev:
		default:
			return fmt.Errorf("service %s: unknown load balancing mode %q", s.Key(), s.LBMode)
		}
		if err := s.validateLB(); err != nil {
			return err
		}
		if len(s.Addresses) == 0 {
			return fmt.Errorf("service %s: no addresses", s.Key())
		}
		if len(s.Ports) == 0 {
			return fmt.Errorf("service %s: no ports", s.Key())
		}
		for _, p := range s.Ports {
			if (p.Port == 0 || p.TargetPort == 0) && !(s.AnyPort() && p.Port == 0 && p.TargetPort == 0 && len(s.Ports) == 1) {
				return fmt.Errorf("service %s: port %d->%d: ports must be 1..65535", s.Key(), p.Port, p.TargetPort)
			}
			if p.Protocol != ProtocolTCP {
				return fmt.Errorf("service %s: port %d: unsupported protocol %q", s.Key(), p.Port, p.Protocol)
			}
		}
		for _, a := range s.Addresses {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				return fmt.Errorf("service %s: invalid address %q", s.Key(), a)
			}
			for _, p := range s.Ports {
				ap := netip.AddrPortFrom(a, p.Port)
				if prev, dup := owner[ap]; dup {
					return fmt.Errorf("service %s: address %s is already used by service %s", s.Key(), ap, prev)
				}
				owner[ap] = s.Key()
			}
		}
		for _, e := range s.Endpoints {
			if !workloads[e.Workload] {
				return fmt.Errorf("service %s: endpoint workload %s does not exist", s.Key(), e.Workload)
			}
		}
	}
	if err := m.validatePolicies(); err != nil {
		return err
	}
	return m.validateL7()
}

// Workload returns the workload with the given key, or nil.
func (m *Mesh) Workload(key string) *Workload {
	for i := range m.Workloads {
		if m.Workloads[i].Key() == key {
			return &m.Workloads[i]
		}
	}
	return nil
}

// Sort orders services and workloads by key, so dumps and diffs are stable.
// It compares namespace then name, which orders as the key "namespace/name"
// does (a name has no "/"), without building a key string per comparison.
func (m *Mesh) Sort() {
	slices.SortFunc(m.Services, func(a, b Service) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	slices.SortFunc(m.Workloads, func(a, b Workload) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
}

// compareKey compares the keys ns1/name1 and ns2/name2 as strings.
func compareKey(ns1, name1, ns2, name2 string) int {
	if ns1 == ns2 {
		return strings.Compare(name1, name2)
	}
	// They differ at i, or one ends there, where its key has the '/'.
	i := 0
	for i < len(ns1) && i < len(ns2) && ns1[i] == ns2[i] {
		i++
	}
	at := func(ns string) byte {
		if i == len(ns) {
			return '/'
		}
		return ns[i]
	}
	return cmp.Compare(at(ns1), at(ns2))
}

// SelectorMatches reports whether every selector label is set on labels.
// An empty selector matches nothing, as in Kubernetes services without a
// selector, whose endpoints are managed elsewhere.
func SelectorMatches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// UnenforcedPolicy is a policy accepted but not enforced by the node, and
// why.
type UnenforcedPolicy struct {
	Name, Namespace string
	Action          string // as Istio spells it, lower case: custom
	Reason          string
}

// Key is the policy's name in the mesh: namespace/name.
func (p *UnenforcedPolicy) Key() string { return p.Namespace + "/" + p.Name }
