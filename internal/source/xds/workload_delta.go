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
	// members are the workloads that name each host, with their port
	// mappings: a first index takes the full build's (every workload's
	// current value; the store's entry replaces it on a change).
	members map[string][]member
	// Names sets are slices: most hold a few names, and a slice costs a
	// fraction of a map at 500,000 workloads.
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

// newWorkloadIndex indexes what the full build b made of st. The build's
// passes over the workloads are not made again: its members become the
// index's, and its workloads in key order (the mesh's, and those it left
// out for an older one's key) give the claims. At 500,000 workloads a
// pass over the store's map (in its random order) with a member and a
// key set to fill per workload was ~1.3 s of CPU, beside the data plane's
// first apply on two cores.
func newWorkloadIndex(st *store, b *built) *workloadIndex {
	// Sized from the mesh once: at 100,000 workloads growing the key
	// sets through every doubling rehashed each several times.
	m, wc := b.mesh, b.workloads
	nw, ns := len(m.Workloads), len(m.Services)
	ix := &workloadIndex{
		wlKeys: keyset.WithCapacity[string](nw), svcKeys: keyset.WithCapacity[string](ns), polKeys: keyset.WithCapacity[string](len(m.Policies)),
		hosts: keyset.WithCapacity[string](ns), fronts: keyset.WithCapacity[netip.AddrPort](ns),
		members: packMembers(wc.members), byPolicy: map[string][]string{},
		wpRefs: map[string][]string{}, wpHosts: map[string][]string{},
		services: make(map[string]*model.Service, ns), keyOf: make(map[string]string, ns),
		workloads: make(map[string]*model.Workload, nw), policies: make(map[string]*model.Policy, len(m.Policies)),
	}
	i := -1
	for j, o := range wc.order {
		name := wc.addrs[o.at].name
		if j == 0 || wc.order[j-1].key != o.key {
			i++ // the first of a key is the mesh's i-th workload
			ix.workloads[o.key] = &m.Workloads[i]
			ix.wlKeys.First(o.key, name)
		} else {
			// Left out of the build, and of its members.
			for _, ms := range o.w.services {
				ix.members[ms.host] = append(ix.members[ms.host], member{o.w, ms.ports})
			}
			ix.wlKeys.Mark(o.key, name, true)
		}
		for _, p := range o.w.w.Policies {
			mark(ix.byPolicy, p, name, true)
		}
		if o.w.waypoint != nil {
			mark(ix.wpRefs, o.w.waypoint.String(), name, true)
		}
	}
	for i := range m.Services {
		ix.services[m.Services[i].Key()] = &m.Services[i]
	}
	for _, e := range wc.addrs {
		if s, ok := e.value.(*service); ok {
			ix.claim(e.name, s, true)
			if ix.services[s.s.Key()] != nil {
				ix.keyOf[s.host] = s.s.Key()
			}
		}
	}
	for name, e := range st.byType[AuthorizationType] {
		ix.claim(name, e.value, true)
	}
	for i := range m.Policies {
		ix.policies[m.Policies[i].Key()] = &m.Policies[i]
	}
	return ix
}

// packMembers copies the build's members into one array, each host's
// exactly as long as it is: the build grew them by appends, and the last
// of those arrays, kept among the garbage of the others, kept ~15 MB more
// of the heap in use at 100,000 workloads (kmeshd's RSS after its first
// sync 162/165 MiB with an index of its own, 182/180 with the build's
// members as they are, 168/165 packed).
func packMembers(members map[string][]member) map[string][]member {
	n := 0
	for _, mbs := range members {
		n += len(mbs)
	}
	all := make([]member, 0, n)
	out := make(map[string][]member, len(members))
	for host, mbs := range members {
		all = append(all, mbs...)
		out[host] = all[len(all)-len(mbs) : len(all) : len(all)]
	}
	return out
}

func mark[K comparable](m map[K][]string, key K, name string, on bool) {
	markBy(m, key, name, func(n string) bool { return n == name }, on)
}

// markMember adds (on) or removes workload w from the members of host.
func markMember(m map[string][]member, host string, w *workload, ports portMap, on bool) {
	markBy(m, host, member{w, ports}, func(mb member) bool { return mb.w == w }, on)
}

// markBy adds v to key's list (on) unless one the same is there, or
// removes the one that is (off), dropping the key with its last.
func markBy[K comparable, V any](m map[K][]V, key K, v V, same func(V) bool, on bool) {
	vs := m[key]
	i := slices.IndexFunc(vs, same)
	switch {
	case on && i < 0:
		m[key] = append(vs, v)
	case !on && i >= 0:
		vs = slices.Delete(vs, i, i+1)
		if len(vs) == 0 {
			delete(m, key)
		} else {
			m[key] = vs
		}
	}
}

// claim records (on) or forgets resource name's claims.
func (ix *workloadIndex) claim(name string, v any, on bool) {
	switch v := v.(type) {
	case *workload:
		ix.wlKeys.Mark(v.key, name, on)
		for _, ms := range v.services {
			markMember(ix.members, ms.host, v, ms.ports, on)
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
		members := ix.members[host]
		for _, mb := range members {
			if ix.wlKeys.Count(mb.w.key) > 1 {
				return nil, nil, true
			}
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
