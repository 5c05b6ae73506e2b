package xds

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/internal/keyset"
	"github.com/kmesh-go/kmesh/internal/model"
)

// workloadIndex turns one response of the workload API into the model
// changes it makes, without rebuilding the mesh: it keeps who claims each
// key (workload and service keys, hosts, service addresses, policy keys),
// the members of each host, and what it last handed over. A response that
// touches a key two resources claim (where "older wins" decides) is left
// to the full build (buildWorkloadMesh), whose result is diffed instead.
type workloadIndex struct {
	// Keys one resource claims (two only when "older wins" decides).
	wlKeys, svcKeys, polKeys, hosts keyset.Map[string] // key -> resource names
	fronts                          keyset.Map[netip.AddrPort]
	// Names sets are slices: most hold a few names, and a slice costs a
	// fraction of a map at 500,000 workloads.
	members  map[string][]string // host -> workload resource names
	byPolicy map[string][]string // policy key -> workload resource names naming it
	// wpRefs are the waypoints services and workloads name (address or
	// host, as waypointRef.String) and wpHosts the hosts of those services: a
	// response touching either is left to the full build, which resolves
	// waypoints (workload_waypoint.go).
	wpRefs, wpHosts map[string][]string

	services  map[string]*model.Service // by service key, as handed over
	keyOf     map[string]string         // host -> key of its service, as handed over
	workloads map[string]*model.Workload
	policies  map[string]*model.Policy
}

func newWorkloadIndex(st *store, m *model.Mesh) *workloadIndex {
	// Sized from the mesh once: at 100,000 workloads growing the key
	// sets through every doubling rehashed each several times.
	nw, ns := len(m.Workloads), len(m.Services)
	ix := &workloadIndex{
		wlKeys: keyset.WithCapacity[string](nw), svcKeys: keyset.WithCapacity[string](ns), polKeys: keyset.WithCapacity[string](len(m.Policies)),
		hosts: keyset.WithCapacity[string](ns), fronts: keyset.WithCapacity[netip.AddrPort](ns),
		members: make(map[string][]string, ns), byPolicy: map[string][]string{},
		wpRefs: map[string][]string{}, wpHosts: map[string][]string{},
		services: make(map[string]*model.Service, ns), keyOf: make(map[string]string, ns),
		workloads: make(map[string]*model.Workload, len(m.Workloads)), policies: make(map[string]*model.Policy, len(m.Policies)),
	}
	for _, t := range []string{AddressType, AuthorizationType} {
		for name, e := range st.byType[t] {
			ix.claimWith(name, e.value, true, addMember)
		}
	}
	for i := range m.Services {
		ix.services[m.Services[i].Key()] = &m.Services[i]
	}
	for _, e := range st.byType[AddressType] {
		if s, ok := e.value.(*service); ok && ix.services[s.s.Key()] != nil {
			ix.keyOf[s.host] = s.s.Key()
		}
	}
	for i := range m.Workloads {
		ix.workloads[m.Workloads[i].Key()] = &m.Workloads[i]
	}
	for i := range m.Policies {
		ix.policies[m.Policies[i].Key()] = &m.Policies[i]
	}
	return ix
}

func mark[K comparable](m map[K][]string, key K, name string, on bool) {
	names := m[key]
	i := slices.Index(names, name)
	switch {
	case on && i < 0:
		m[key] = append(names, name)
	case !on && i >= 0:
		names = slices.Delete(names, i, i+1)
		if len(names) == 0 {
			delete(m, key)
		} else {
			m[key] = names
		}
	}
}

// addMember is mark for a new index: each workload is claimed once and
// names each host once, so its name is not among the host's members yet.
// Looking (mark) cost a scan of the members per member: at 500,000
// workloads a third of the index's CPU, and quadratic in a service's
// endpoints.
func addMember(m map[string][]string, host, name string, _ bool) {
	m[host] = append(m[host], name)
}

// claim records (on) or forgets resource name's claims.
func (ix *workloadIndex) claim(name string, v any, on bool) {
	ix.claimWith(name, v, on, mark[string])
}

// claimWith is claim, with member marking the workloads' memberships.
func (ix *workloadIndex) claimWith(name string, v any, on bool, member func(map[string][]string, string, string, bool)) {
	switch v := v.(type) {
	case *workload:
		ix.wlKeys.Mark(v.key, name, on)
		for _, ms := range v.services {
			member(ix.members, ms.host, name, on)
		}
		for _, p := range v.w.Policies {
			mark(ix.byPolicy, p, name, on)
		}
		if v.waypoint != nil {
			mark(ix.wpRefs, v.waypoint.String(), name, on)
		}
	case *service:
		if v.skip != "" {
			return
		}
		ix.svcKeys.Mark(v.s.Key(), name, on)
		if v.waypoint != nil {
			mark(ix.wpRefs, v.waypoint.String(), name, on)
			mark(ix.wpHosts, v.host, name, on)
		}
		ix.hosts.Mark(v.host, name, on)
		for _, a := range v.s.Addresses {
			for p := range v.targets {
				ix.fronts.Mark(netip.AddrPortFrom(a, p), name, on)
			}
		}
	case *model.Policy:
		ix.polKeys.Mark(v.Key(), name, on)
	}
}

// contested reports whether any key v claims has another claimant.
func (ix *workloadIndex) contested(v any) bool {
	switch v := v.(type) {
	case *workload:
		return ix.wlKeys.Count(v.key) > 1
	case *service:
		if v.skip != "" {
			return false
		}
		if ix.svcKeys.Count(v.s.Key()) > 1 || ix.hosts.Count(v.host) > 1 {
			return true
		}
		for _, a := range v.s.Addresses {
			for p := range v.targets {
				if ix.fronts.Count(netip.AddrPortFrom(a, p)) > 1 {
					return true
				}
			}
		}
	case *model.Policy:
		return ix.polKeys.Count(v.Key()) > 1
	}
	return false
}

// waypointBound reports whether v takes part in a waypoint redirect: a
// service with a waypoint, a waypoint itself, or a workload of either.
func (ix *workloadIndex) waypointBound(st *store, v any) bool {
	if s, ok := v.(*service); ok && s.waypoint != nil {
		return true
	}
	if w, ok := v.(*workload); ok && w.waypoint != nil {
		return true
	}
	if p, ok := v.(*model.Policy); ok && p.Namespace == WaypointNotServedNamespace && strings.HasPrefix(p.Name, "waypoint-not-served-") {
		return true // it may clash with a workload's deny policy: the full build names them
	}
	if len(ix.wpRefs) == 0 {
		return false
	}
	switch v := v.(type) {
	case *workload:
		for _, a := range v.w.Addresses {
			if len(ix.wpRefs[a.String()]) > 0 {
				return true
			}
		}
		for _, ms := range v.services {
			host := ms.host
			if len(ix.wpHosts[host]) > 0 || len(ix.wpRefs[host]) > 0 {
				return true
			}
			// A member of a waypoint named by its address.
			for _, name := range ix.hosts.Names(host) {
				if e := st.get(AddressType, name); e != nil && ix.waypointBound(st, e.value) {
					return true
				}
			}
		}
	case *service:
		if len(ix.wpRefs[v.host]) > 0 {
			return true
		}
		for _, a := range v.s.Addresses {
			if len(ix.wpRefs[a.String()]) > 0 {
				return true
			}
		}
	}
	return false
}

// delta updates the index for the resources of typeURL named in old (their
// previous entries, nil for new ones; st already holds the new ones) and
// returns the model changes. full means the response touches a contested
// key: the caller builds the whole mesh instead (and a new index).
func (ix *workloadIndex) delta(st *store, typeURL string, old map[string]*entry) (c *model.Changes, notes []string, full bool) {
	dirtyHosts := map[string]bool{}
	dirtyWl := map[string]bool{}  // workload keys
	dirtyPol := map[string]bool{} // policy keys
	touch := func(v any) {
		switch v := v.(type) {
		case *workload:
			dirtyWl[v.key] = true
			for _, ms := range v.services {
				host := ms.host
				dirtyHosts[host] = true
			}
		case *service:
			dirtyHosts[v.host] = true
		case *model.Policy:
			dirtyPol[v.Key()] = true
		}
	}
	for name, o := range old {
		if (o != nil && ix.waypointBound(st, o.value)) || (st.get(typeURL, name) != nil && ix.waypointBound(st, st.get(typeURL, name).value)) {
			return nil, nil, true
		}
		if o != nil {
			if ix.contested(o.value) {
				return nil, nil, true
			}
			ix.claim(name, o.value, false)
			touch(o.value)
		}
		if e := st.get(typeURL, name); e != nil {
			ix.claim(name, e.value, true)
			if ix.contested(e.value) {
				return nil, nil, true
			}
			touch(e.value)
		}
	}
	c = &model.Changes{}
	present := func(key string) bool { return ix.polKeys.Count(key) == 1 }
	for key := range dirtyPol {
		was := ix.policies[key] != nil
		if name, ok := ix.polKeys.Only(key); ok {
			p := st.get(AuthorizationType, name).value.(*model.Policy)
			if cur := ix.policies[key]; cur == nil || !reflect.DeepEqual(cur, p) {
				c.Policies = append(c.Policies, p)
				ix.policies[key] = p
			}
		} else if was {
			c.RemovedPolicies = append(c.RemovedPolicies, key)
			delete(ix.policies, key)
		}
		if was != (ix.policies[key] != nil) {
			// The workloads naming it list it now, or no more.
			for _, name := range ix.byPolicy[key] {
				if e := st.get(AddressType, name); e != nil {
					dirtyWl[e.value.(*workload).key] = true
				}
			}
		}
	}
	for key := range dirtyWl {
		n := ix.wlKeys.Count(key)
		if n > 1 {
			return nil, nil, true
		}
		if n == 0 {
			if ix.workloads[key] != nil {
				c.RemovedWorkloads = append(c.RemovedWorkloads, key)
				delete(ix.workloads, key)
			}
			continue
		}
		name, _ := ix.wlKeys.Only(key)
		w := st.get(AddressType, name).value.(*workload)
		if w.waypoint != nil {
			// Its deny policy and the waypoint's instances it spares
			// are the full build's (workload_waypoint.go).
			return nil, nil, true
		}
		mw := modelWorkload(w, present)
		if cur := ix.workloads[key]; cur == nil || !reflect.DeepEqual(cur, mw) {
			c.Workloads = append(c.Workloads, mw)
			ix.workloads[key] = mw
		}
	}
	built := map[string]*model.Service{} // by host; nil: the host has no service now
	for host := range dirtyHosts {
		built[host] = nil
		n := ix.hosts.Count(host)
		if n > 1 {
			// Two resources claim the host (a workload's membership made
			// it dirty): the older one's service stays, which only the
			// full build decides.
			return nil, nil, true
		}
		if n == 0 {
			continue
		}
		name, _ := ix.hosts.Only(host)
		s := st.get(AddressType, name).value.(*service)
		if ix.contested(s) {
			return nil, nil, true
		}
		var members []member
		for _, name := range ix.members[host] {
			w := st.get(AddressType, name).value.(*workload)
			if ix.wlKeys.Count(w.key) > 1 {
				return nil, nil, true
			}
			members = append(members, member{w, w.portsFor(host)})
		}
		if ms, ok := buildService(s, members, &notes); ok {
			built[host] = &ms
		}
	}
	// Removals first: a key may move from one host to another.
	setKeys := map[string]bool{}
	for _, ms := range built {
		if ms != nil {
			setKeys[ms.Key()] = true
		}
	}
	for host, ms := range built {
		if key, ok := ix.keyOf[host]; ok && (ms == nil || key != ms.Key()) {
			delete(ix.keyOf, host)
			if !setKeys[key] {
				c.RemovedServices = append(c.RemovedServices, key)
				delete(ix.services, key)
			}
		}
	}
	for host, ms := range built {
		if ms == nil {
			continue
		}
		if cur := ix.services[ms.Key()]; cur == nil || !reflect.DeepEqual(cur, ms) {
			c.Services = append(c.Services, ms)
			ix.services[ms.Key()] = ms
		}
		ix.keyOf[host] = ms.Key()
	}
	return c, notes, false
}
