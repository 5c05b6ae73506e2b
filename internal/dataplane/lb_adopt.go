package dataplane

import (
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// adoptLB returns what a previous instance wrote for an adopted service's
// balancer beyond its slot table (km_lb_conf, km_lb_backend, the locality
// tables in km_lb_prio and endpoint groups, the Maglev tables) when it is
// what writeLB would write for ws in the live generation, so a restart
// leaves the service, and the kernel's failure counts, ejections and
// affinity entries, as they are. ok is false when the service must be
// written again: the maps hold something else.
func (d *Dataplane) adoptLB(id uint32, sv bpf.KmeshServiceValue, ws *desiredService) (st *lbState, ok bool) {
	sp := ws.lb
	if sp == nil {
		sp = &lbSpec{}
	}
	if sv.Flags != sp.flags {
		return nil, false // the kernel would still balance the old way
	}
	if lbUnchanged(nil, ws.lb) && ws.lbMode != uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV) {
		return nil, true
	}
	for _, eps := range ws.endpoints {
		for _, e := range eps {
			if d.backends[e.workload] == nil {
				return nil, false
			}
		}
	}
	st = &lbState{spec: ws.lb, members: map[uint32]bool{}}
	if sp.locality != nil && !d.adoptLocality(id, sv.Gen, ws, st) {
		return nil, false
	}
	if ws.lbMode == uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV) {
		for fam, eps := range ws.endpoints {
			if len(eps) == 0 {
				continue
			}
			want, err := d.maglevTable(eps)
			if err != nil {
				return nil, false
			}
			got, err := d.maps.KmMaglev.Get(id*2 + uint32(fam))
			if err != nil || !slices.Equal(got, want) {
				return nil, false
			}
			st.maglev[fam] = true
		}
	}
	affinityOrOutlier := uint16(bpf.KmeshKmLbFlagKM_LB_AFFINITY | bpf.KmeshKmLbFlagKM_LB_OUTLIER)
	if sp.flags&affinityOrOutlier == 0 {
		return st, true
	}
	for _, eps := range ws.endpoints {
		for _, e := range eps {
			st.members[d.backends[e.workload].id] = true
		}
	}
	want := sp.conf
	want.Backends = uint32(len(st.members))
	var conf bpf.KmeshLbConf
	if err := d.maps.KmLbConf.Lookup(id, &conf); err != nil || conf != want {
		return nil, false
	}
	var v bpf.KmeshLbBackend
	for b := range st.members {
		if err := d.maps.KmLbBackend.Lookup(bpf.KmeshLbBackendKey{ServiceId: id, BackendId: b}, &v); err != nil {
			return nil, false
		}
	}
	return st, true
}

// adoptLocality checks a locality service's tables of generation gen
// against what writeLB would write for the client classes known now:
// the same km_lb_prio entries (no more, no fewer) and the same group
// slots. On success st records them and they leave the stale set.
func (d *Dataplane) adoptLocality(id uint32, gen uint8, ws *desiredService, st *lbState) bool {
	s := d.stale
	tables := d.localityTables(id, ws, gen)
	if s.priosOf[id] != len(tables) {
		return false // a class this instance does not know, or one missing
	}
	for _, t := range tables {
		if v, ok := s.prios[t.key]; !ok || v != t.value {
			return false
		}
		for _, g := range t.groups {
			for i, b := range g.slots {
				k := bpf.KmeshEndpointKey{ServiceId: id, Family: t.key.Family, Gen: gen, Group: g.group, Slot: uint32(i)}
				if got, ok := s.endpoints[k]; !ok || got != b {
					return false
				}
			}
		}
	}
	for _, t := range tables {
		st.prios = append(st.prios, t.key)
		delete(s.prios, t.key)
		for _, g := range t.groups {
			st.groups = append(st.groups, groupCount{t.key.Family, gen, g.group, len(g.slots)})
			for i := range g.slots {
				delete(s.endpoints, bpf.KmeshEndpointKey{ServiceId: id, Family: t.key.Family, Gen: gen, Group: g.group, Slot: uint32(i)})
			}
		}
	}
	delete(s.priosOf, id)
	return true
}

// adoptClasses gives the previous instance's client classes back their
// ids: a class is the locality of the workloads its clients are, found by
// the client address km_lb_client keeps. A class whose clients name no
// workload of want, or disagree, stays unknown (services with tables for
// it are written again) and its id is not given out again.
func (d *Dataplane) adoptClasses(want *desired) {
	s := d.stale
	if len(d.lbClients) == 0 {
		return
	}
	floor := uint16(1)
	for _, c := range d.lbClients {
		floor = max(floor, c.ClientClass+1)
	}
	for k := range s.prios {
		floor = max(floor, k.ClientClass+1)
	}
	d.lbClassFloor = max(d.lbClassFloor, floor)

	byAddr := map[netip.Addr][]classKey{}
	for _, w := range want.workloads {
		if a, ok := clientAddr(w.Addresses); ok {
			byAddr[a] = append(byAddr[a], classOf(w))
		}
	}
	keyOf := map[uint16]classKey{}
	bad := map[uint16]bool{}
	for _, c := range d.lbClients {
		if c.ClientClass == 0 {
			continue
		}
		ks := byAddr[bpf.WordsAddr(c.Addr).Unmap()]
		if len(ks) == 0 || slices.ContainsFunc(ks[1:], func(k classKey) bool { return k != ks[0] }) {
			bad[c.ClientClass] = true
			continue
		}
		if k, ok := keyOf[c.ClientClass]; ok && k != ks[0] {
			bad[c.ClientClass] = true
			continue
		}
		keyOf[c.ClientClass] = ks[0]
	}
	ids := map[classKey]uint16{}
	for id, k := range keyOf {
		if bad[id] {
			continue
		}
		if _, dup := ids[k]; dup {
			bad[id] = true // two ids for one locality: keep the first seen
			continue
		}
		ids[k] = id
	}
	for k, id := range ids {
		if _, ok := d.lbClasses[k]; !ok {
			d.lbClasses[k] = id
		}
	}
}
