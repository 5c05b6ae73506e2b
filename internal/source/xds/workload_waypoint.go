package xds

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/internal/model"
)

// A service that istiod gives a waypoint is reached only through it, as
// ztunnel does: its endpoints become the waypoint's instances, on the
// service's own ports (the plaintext redirect the file source gets from
// model.WithWaypointRedirect; kmesh-waypoint listens on the ports of the
// services it serves). A waypoint that is not known (not in the workload
// API yet, or with no instance taking traffic) leaves the service without
// endpoints, so connects to it are refused at once: the waypoint is never
// bypassed. The service's Waypoint field says which it is.

// waypoints finds the instances of a waypoint among the resources of one
// build.
type waypoints struct {
	byHost   map[string]*service // host -> the service that holds it
	byAddr   map[netip.Addr]*service
	workload map[netip.Addr]*workload
	byKey    map[string]*workload
	members  map[string][]member
}

func newWaypoints(members map[string][]member) *waypoints {
	return &waypoints{byHost: map[string]*service{}, byAddr: map[netip.Addr]*service{},
		workload: map[netip.Addr]*workload{}, byKey: map[string]*workload{}, members: members}
}

// addService records a service of the build (the older one wins, as in
// the build itself).
func (wp *waypoints) addService(s *service) {
	if _, ok := wp.byHost[s.host]; !ok {
		wp.byHost[s.host] = s
	}
	for _, a := range s.s.Addresses {
		if _, ok := wp.byAddr[a]; !ok {
			wp.byAddr[a] = s
		}
	}
}

func (wp *waypoints) addWorkload(w *workload) {
	if _, ok := wp.byKey[w.key]; !ok {
		wp.byKey[w.key] = w
	}
	for _, a := range w.w.Addresses {
		if _, ok := wp.workload[a]; !ok {
			wp.workload[a] = w
		}
	}
}

// instances returns the workloads a connection to the waypoint r may go
// to, or why there are none.
func (wp *waypoints) instances(r *waypointRef) ([]model.Endpoint, string) {
	var s *service
	if r.host != "" {
		s = wp.byHost[r.host]
	} else {
		s = wp.byAddr[r.addr]
		if s == nil {
			if w := wp.workload[r.addr]; w != nil {
				if !w.endpoint || !w.healthy {
					return nil, fmt.Sprintf("waypoint workload %s does not take traffic", w.key)
				}
				return []model.Endpoint{{Workload: w.key}}, ""
			}
		}
	}
	if s == nil {
		return nil, "waypoint " + r.String() + " is not known"
	}
	var eps []model.Endpoint
	for _, mb := range wp.members[s.host] {
		if mb.w.endpoint && (mb.w.healthy || s.allowUnhealthy) {
			eps = append(eps, model.Endpoint{Workload: mb.w.key})
		}
	}
	if len(eps) == 0 {
		return nil, "waypoint " + r.String() + " has no instance taking traffic"
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int {
		if a.Workload < b.Workload {
			return -1
		}
		if a.Workload > b.Workload {
			return 1
		}
		return 0
	})
	return slices.Compact(eps), ""
}

// redirect makes ms, the service s as built, reachable only through its
// waypoint.
func (wp *waypoints) redirect(s *service, ms *model.Service, notes *[]string) {
	eps, why := wp.instances(s.waypoint)
	ms.Waypoint = &model.ServiceWaypoint{Address: s.waypoint.String(), Unresolved: why}
	ms.Endpoints = eps
	ms.Ports = slices.Clone(s.s.Ports)
	for i := range ms.Ports {
		ms.Ports[i].TargetPort = ms.Ports[i].Port
	}
	if why != "" {
		*notes = append(*notes, fmt.Sprintf("service %s: %s; connections to it are refused until it is", s.host, why))
	}
}

// A workload that istiod gives a waypoint of its own (waypoint-for
// workload or all) is reached, at its own address, only through that
// waypoint, as ztunnel does: the build adds a service of the workload's
// addresses on every port (model.WorkloadService) balanced over the
// waypoint's instances, which kmeshd carries over HBONE with the
// workload's address and port as authority (the kernel refuses it
// otherwise), and gives the workload a deny policy that refuses every
// client but the waypoint's instances (at the client's connect() with
// EACCES, and with a SYN drop at the workload), so nothing reaches it
// around the waypoint. The policy's name is the one it had when workload
// waypoints were not served yet; the workload's Waypoint field names the
// waypoint.

// WaypointNotServedNamespace is the namespace of the deny policies the
// xDS source makes for workloads with a waypoint of their own; their
// names are waypoint-not-served-<namespace>.<name> (namespaces have no
// dots, so the name is unique; a control-plane policy that already has it
// pushes ours to a numbered name).
const WaypointNotServedNamespace = "kmesh-system"

// WaypointNotServedName is the name of the deny policy for the workload
// namespace/name.
func WaypointNotServedName(namespace, name string) string {
	return "waypoint-not-served-" + namespace + "." + name
}

// unservedAt is a workload of the build (its index in the mesh's
// workloads) with a waypoint of its own.
type unservedAt struct {
	i   int
	ref *waypointRef
}

// refuse gives mw, whose waypoint is r, the deny policy that refuses
// connections to it from everyone but the waypoint's instances.
func (wp *waypoints) refuse(mw *model.Workload, r *waypointRef, policies map[string]bool, b *built) {
	p := model.Policy{Name: WaypointNotServedName(mw.Namespace, mw.Name), Namespace: WaypointNotServedNamespace,
		Scope: model.ScopeWorkloadSelector, Action: model.ActionDeny}
	// A control-plane policy of that name would be a strange clash; the
	// workload is refused all the same, under a numbered name.
	for n := 2; policies[p.Key()]; n++ {
		p.Name = fmt.Sprintf("%s-%d", WaypointNotServedName(mw.Namespace, mw.Name), n)
	}
	eps, why := wp.instances(r)
	var spared []netip.Prefix
	for _, ep := range eps {
		if iw := wp.byKey[ep.Workload]; iw != nil {
			for _, a := range iw.w.Addresses {
				spared = append(spared, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	rule := model.PolicyRule{} // no clauses: every connection
	if len(spared) > 0 {
		rule.Clauses = []model.PolicyClause{{Matches: []model.PolicyMatch{{NotSourceIPs: spared}}}}
	}
	p.Rules = []model.PolicyRule{rule}
	policies[p.Key()] = true
	b.mesh.Policies = append(b.mesh.Policies, p)
	// A new slice: mw's may share its array with the converted workload's.
	mw.Policies = append(slices.Clip(mw.Policies), p.Key())
	mw.Waypoint = r.String()
	if why != "" {
		b.notes = append(b.notes, fmt.Sprintf("workload %s: waypoint %s: %s; connections to the workload are refused until it is", mw.Key(), r, why))
	}
}

// workloadService is the service that sends connections to mw's own
// addresses to its waypoint r (on the ports no service of the same
// address has: the kernel looks those up first); ok is false when the
// workload has no address.
func (wp *waypoints) workloadService(mw *model.Workload, r *waypointRef) (model.Service, bool) {
	if len(mw.Addresses) == 0 {
		return model.Service{}, false
	}
	eps, why := wp.instances(r)
	return model.WorkloadService(mw, r.String(), eps, why), true
}

// markInstances sets WaypointInstanceOf on the workloads (m.Workloads[i]
// is built[i]'s) that are instances of a waypoint some service or
// workload of the build names: the workload API carries no labels, so
// this is how kmeshd knows a waypoint's pods. It never captures them, and
// reaches them over HBONE even on its own node (model.Workload
// TunnelledFrom), as ztunnel does. An instance is marked whether or not
// it takes traffic now. The mark is set on a copy: the converted
// workload is the store's.
func (wp *waypoints) markInstances(m *model.Mesh, built []*workload) {
	of := map[string]string{} // workload key -> waypoint
	mark := func(r *waypointRef) {
		for _, key := range wp.instanceKeys(r) {
			if _, ok := of[key]; !ok {
				of[key] = r.String()
			}
		}
	}
	for _, s := range wp.byHost {
		if s.waypoint != nil {
			mark(s.waypoint)
		}
	}
	for _, w := range built {
		if w.waypoint != nil {
			mark(w.waypoint)
		}
	}
	if len(of) == 0 {
		return
	}
	for i, w := range built {
		if r, ok := of[w.key]; ok {
			m.Workloads[i].WaypointInstanceOf = r
		}
	}
}

// instanceKeys returns the keys of every workload that is an instance of the
// waypoint r, healthy or not.
func (wp *waypoints) instanceKeys(r *waypointRef) []string {
	var s *service
	if r.host != "" {
		s = wp.byHost[r.host]
	} else if s = wp.byAddr[r.addr]; s == nil {
		if w := wp.workload[r.addr]; w != nil {
			return []string{w.key}
		}
		return nil
	}
	if s == nil {
		return nil
	}
	var keys []string
	for _, mb := range wp.members[s.host] {
		keys = append(keys, mb.w.key)
	}
	return keys
}
