package dataplane

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/maglev"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Locality, session affinity, Maglev and outlier detection (bpf/include/lb.h).
//
// Closeness is measured from the client. Each distinct locality among the
// workloads this kmeshd enrolled is a client class (km_lb_client); class 0
// is a client the mesh does not know. For a service with a routing
// preference, every class gets its own slot tables, one per priority
// (endpoint_key.group = 1 + class*8 + priority), counted in km_lb_prio. A
// node's workloads usually share one locality, so this costs one set of
// tables per service, and the kernel's pick stays one lookup.

// lbSpec is what a service asks of the balancer beyond its slot table.
type lbSpec struct {
	flags    uint16
	conf     bpf.KmeshLbConf
	locality *model.LocalityLB
}

// lbUnchanged reports whether a service written with st (nil: adopted from
// a previous instance, so plain) asks the same of the balancer as sp.
func lbUnchanged(st *lbState, sp *lbSpec) bool {
	if st == nil {
		return sp == nil || reflect.DeepEqual(*sp, lbSpec{})
	}
	return reflect.DeepEqual(st.spec, sp)
}

func translateLB(s *model.Service, ds *desiredService) {
	sp := &lbSpec{locality: s.Locality}
	if s.Locality != nil {
		sp.flags |= uint16(bpf.KmeshKmLbFlagKM_LB_LOCALITY)
		if s.Locality.Mode == model.LocalityStrict {
			sp.flags |= uint16(bpf.KmeshKmLbFlagKM_LB_STRICT)
		}
	}
	if a := s.SessionAffinity; a != nil {
		sp.flags |= uint16(bpf.KmeshKmLbFlagKM_LB_AFFINITY)
		sp.conf.AffinityTimeoutS = uint32(a.Timeout.Seconds())
	}
	if o := s.OutlierDetection; o != nil {
		sp.flags |= uint16(bpf.KmeshKmLbFlagKM_LB_OUTLIER)
		sp.conf.ConsecutiveFailures = uint16(o.ConsecutiveFailures)
		sp.conf.BaseEjectionMs = uint32(o.BaseEjectionTime.Milliseconds())
		sp.conf.MaxEjectionPct = uint8(o.MaxEjectionPercent)
	}
	ds.lb = sp
}

// lbState is what writeLB wrote for a service.
type lbState struct {
	spec    *lbSpec
	groups  []groupCount // locality slot tables of the live generation
	prios   []bpf.KmeshLbPrioKey
	members map[uint32]bool // backend ids in km_lb_backend
	maglev  [2]bool         // tables at id*2+family
}

type groupCount struct {
	family, gen uint8
	group       uint16
	n           int
}

// classKey is a client locality: what the scopes compare.
type classKey struct {
	network, region, zone, subzone, node string
}

func classOf(w *model.Workload) classKey {
	return classKey{w.Network, w.Locality.Region(), w.Locality.Zone(), w.Locality.Subzone(), w.Node}
}

func (k classKey) workload() *model.Workload {
	return &model.Workload{Network: k.network, Node: k.node,
		Locality: model.NewLocality(k.region, k.zone, k.subzone)}
}

// maxClasses keeps group numbers in endpoint_key.group's 16 bits.
const maxClasses = (1<<16 - 1) / int(bpf.KmeshKmLbLimitKM_LB_PRIORITIES)

// priorities sorts eps into priorities for client (nil: unknown): the
// distinct ranks present, closest first; ranks past the eighth share the
// last priority. STRICT leaves out what does not match every scope, and
// an unknown client matches nothing.
func priorities(lb *model.LocalityLB, client *model.Workload, eps []weightedWorkload, workloads func(string) *model.Workload) [][]weightedWorkload {
	if client == nil {
		if lb.Mode == model.LocalityStrict {
			return nil
		}
		return [][]weightedWorkload{eps}
	}
	byRank := map[int][]weightedWorkload{}
	for _, e := range eps {
		w := workloads(e.workload)
		if w == nil {
			continue
		}
		if r, ok := lb.Rank(client, w); ok {
			byRank[r] = append(byRank[r], e)
		}
	}
	ranks := make([]int, 0, len(byRank))
	for r := range byRank {
		ranks = append(ranks, r)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ranks)))
	n := int(bpf.KmeshKmLbLimitKM_LB_PRIORITIES)
	out := make([][]weightedWorkload, 0, min(len(ranks), n))
	for i, r := range ranks {
		if i < n {
			out = append(out, byRank[r])
		} else {
			out[n-1] = append(out[n-1], byRank[r]...)
		}
	}
	return out
}

// writeLB writes what the service's next generation gen needs besides its
// slot table, before the service flips to it, and returns the service
// flags to flip with. On error what it wrote is undone.
func (d *Dataplane) writeLB(id uint32, isNew bool, old *lbState, ws *desiredService, gen uint8) (uint16, *lbState, error) {
	sp := ws.lb
	if sp == nil {
		sp = &lbSpec{}
	}
	st := &lbState{spec: sp, members: map[uint32]bool{}}
	fail := func(err error) (uint16, *lbState, error) {
		d.deleteLBGen(id, st)
		return 0, nil, err
	}
	if isNew {
		if err := d.maps.KmLbEject.Put(id, bpf.KmeshLbEject{}); err != nil {
			return fail(fmt.Errorf("reset ejections: %w", mapErr(bpf.KmeshMapKmLbEject, err)))
		}
	}
	if sp.locality != nil {
		for _, t := range d.localityTables(id, ws, gen) {
			for _, g := range t.groups {
				st.groups = append(st.groups, groupCount{t.key.Family, gen, g.group, len(g.slots)})
				if err := d.putGroup(id, t.key.Family, gen, g.group, g.slots); err != nil {
					return fail(err)
				}
			}
			st.prios = append(st.prios, t.key)
			if err := d.maps.KmLbPrio.Put(t.key, t.value); err != nil {
				return fail(fmt.Errorf("write priorities: %w", mapErr(bpf.KmeshMapKmLbPrio, err)))
			}
		}
	}
	if ws.lbMode == uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV) {
		for fam, eps := range ws.endpoints {
			if len(eps) == 0 {
				continue
			}
			ids, err := d.maglevTable(eps)
			if err != nil {
				return fail(err)
			}
			if err := d.maps.KmMaglev.Put(id*2+uint32(fam), ids); err != nil {
				return fail(fmt.Errorf("write maglev table: %w", mapErr(bpf.KmeshMapKmMaglev, err)))
			}
			st.maglev[fam] = true
		}
	}
	affinityOrOutlier := uint16(bpf.KmeshKmLbFlagKM_LB_AFFINITY | bpf.KmeshKmLbFlagKM_LB_OUTLIER)
	if sp.flags&affinityOrOutlier != 0 {
		for _, eps := range ws.endpoints {
			for _, e := range eps {
				st.members[d.backends[e.workload].id] = true
			}
		}
		var had map[uint32]bool
		if old != nil {
			had = old.members
		}
		for b := range st.members {
			if had[b] {
				continue // keep the kernel's failure counts and ejection
			}
			k := bpf.KmeshLbBackendKey{ServiceId: id, BackendId: b}
			if err := d.maps.KmLbBackend.Put(k, bpf.KmeshLbBackend{}); err != nil {
				return fail(fmt.Errorf("write service backend: %w", mapErr(bpf.KmeshMapKmLbBackend, err)))
			}
		}
		conf := sp.conf
		conf.Backends = uint32(len(st.members))
		if err := d.maps.KmLbConf.Put(id, conf); err != nil {
			return fail(fmt.Errorf("write balancer settings: %w", mapErr(bpf.KmeshMapKmLbConf, err)))
		}
	}
	return sp.flags, st, nil
}

// prioTable is one client class's view of a locality service in one
// family and generation: its km_lb_prio entry and a slot table per
// priority (endpoint_key.group).
type prioTable struct {
	key    bpf.KmeshLbPrioKey
	value  bpf.KmeshLbPrio
	groups []groupTable
}

type groupTable struct {
	group uint16
	slots []uint32
}

// localityTables computes the tables of a service with a routing
// preference for generation gen: every family, every client class.
func (d *Dataplane) localityTables(id uint32, ws *desiredService, gen uint8) []prioTable {
	var out []prioTable
	classes := d.lbClientClasses()
	for fam, eps := range ws.endpoints {
		for _, c := range classes {
			t := prioTable{key: bpf.KmeshLbPrioKey{ServiceId: id, Family: uint8(fam), Gen: gen, ClientClass: c.id}}
			for p, group := range priorities(ws.lb.locality, c.client, eps, d.lbWorkload) {
				in := make([]weighted, len(group))
				for i, e := range group {
					in[i] = weighted{backend: d.backends[e.workload].id, weight: e.weight}
				}
				slots := expandSlots(in)
				g := uint16(1 + int(c.id)*int(bpf.KmeshKmLbLimitKM_LB_PRIORITIES) + p)
				t.groups = append(t.groups, groupTable{g, slots})
				t.value.Slots[p] = uint32(len(slots))
			}
			out = append(out, t)
		}
	}
	return out
}

// maglevTable is the Maglev lookup table of one family's endpoints, as
// backend ids.
func (d *Dataplane) maglevTable(eps []weightedWorkload) ([]uint32, error) {
	in := make([]maglev.Backend, len(eps))
	for i, e := range eps {
		in[i] = maglev.Backend{Name: e.workload, Weight: e.weight}
	}
	table, err := maglev.Build(in, maglev.DefaultSize)
	if err != nil {
		return nil, err
	}
	ids := make([]uint32, len(table))
	for i, b := range table {
		ids[i] = d.backends[eps[b].workload].id
	}
	return ids, nil
}

func (d *Dataplane) putGroup(id uint32, fam, gen uint8, group uint16, backends []uint32) error {
	for i, b := range backends {
		k := bpf.KmeshEndpointKey{ServiceId: id, Family: fam, Gen: gen, Group: group, Slot: uint32(i)}
		if err := d.maps.KmEndpoint.Put(k, bpf.KmeshEndpointValue{BackendId: b}); err != nil {
			return fmt.Errorf("write endpoint slot %d of group %d: %w", i, group, mapErr(bpf.KmeshMapKmEndpoint, err))
		}
	}
	return nil
}

// deleteLBGen removes a generation's locality tables.
func (d *Dataplane) deleteLBGen(id uint32, st *lbState) {
	if st == nil {
		return
	}
	for _, g := range st.groups {
		for i := range g.n {
			_ = d.maps.KmEndpoint.Delete(bpf.KmeshEndpointKey{ServiceId: id, Family: g.family, Gen: g.gen, Group: g.group, Slot: uint32(i)})
		}
	}
	for _, k := range st.prios {
		_ = d.maps.KmLbPrio.Delete(k)
	}
}

// afterFlipLB frees what the old generation had and the new does not.
func (d *Dataplane) afterFlipLB(id uint32, old, next *lbState) {
	if old == nil {
		return
	}
	d.deleteLBGen(id, old)
	for b := range old.members {
		if !next.members[b] {
			_ = d.maps.KmLbBackend.Delete(bpf.KmeshLbBackendKey{ServiceId: id, BackendId: b})
		}
	}
	if len(next.members) == 0 && len(old.members) > 0 {
		_ = d.maps.KmLbConf.Delete(id)
	}
	for fam, had := range old.maglev {
		if had && !next.maglev[fam] {
			_ = d.maps.KmMaglev.Delete(id*2 + uint32(fam))
		}
	}
}

// removeLB removes all a removed service had (after the service itself).
func (d *Dataplane) removeLB(id uint32, st *lbState) {
	d.afterFlipLB(id, st, &lbState{})
}

type clientClass struct {
	id     uint16
	client *model.Workload // nil: unknown client
}

// lbClientClasses is class 0 and every class given out.
func (d *Dataplane) lbClientClasses() []clientClass {
	out := []clientClass{{id: 0}}
	for k, id := range d.lbClasses {
		out = append(out, clientClass{id: id, client: k.workload()})
	}
	slices.SortFunc(out, func(a, b clientClass) int { return int(a.id) - int(b.id) })
	return out
}

// lbNextClass is the id the next new client class gets: past every id
// given out, by this instance or (adopted) a previous one.
func (d *Dataplane) lbNextClass() uint16 {
	next := uint16(1)
	for _, id := range d.lbClasses {
		next = max(next, id+1)
	}
	return max(next, d.lbClassFloor)
}

// applyClients writes km_lb_client for the enrolled namespaces: who the
// client is (its address, for affinity and Maglev) and its class. A class
// seen for the first time gets tables in every locality service first.
func (d *Dataplane) applyClients(cookies map[uint64]string) error {
	want := map[uint64]bpf.KmeshLbClient{}
	added := false
	for c, key := range cookies {
		w := d.lbWorkload(key)
		if w == nil {
			continue
		}
		k := classOf(w)
		id, ok := d.lbClasses[k]
		if !ok {
			if int(d.lbNextClass()) >= maxClasses {
				return fmt.Errorf("workload %s: more than %d client localities on this node", key, maxClasses-1)
			}
			id = d.lbNextClass()
			d.lbClasses[k] = id
			added = true
		}
		v := bpf.KmeshLbClient{ClientClass: id}
		if a, ok := clientAddr(w.Addresses); ok {
			v.Addr = bpf.AddrWords(a) // an IPv4 address comes out IPv4-mapped
		}
		want[c] = v
	}
	if added {
		var keys []string
		for key, s := range d.services {
			if s.lb != nil && s.lb.spec.locality != nil {
				keys = append(keys, key)
			}
		}
		slices.Sort(keys)
		for _, key := range keys {
			cur := d.services[key]
			if cur.desired == nil {
				continue
			}
			if err := d.writeService(key, cur, cur.desired, cur.slots); err != nil {
				return err
			}
		}
	}
	for c := range d.lbClients {
		if _, ok := want[c]; !ok {
			if err := d.maps.KmLbClient.Delete(c); err != nil && !isNotExist(err) {
				return fmt.Errorf("delete client %d: %w", c, err)
			}
			delete(d.lbClients, c)
		}
	}
	for c, v := range want {
		if cur, ok := d.lbClients[c]; ok && cur == v {
			continue
		}
		if err := d.maps.KmLbClient.Put(c, v); err != nil {
			return fmt.Errorf("write client %d: %w", c, mapErr(bpf.KmeshMapKmLbClient, err))
		}
		d.lbClients[c] = v
	}
	return nil
}

// clientAddr is the address affinity and Maglev key a client by: its first
// IPv4 address (IPv4-mapped, as the kernel's keys), else its first.
func clientAddr(addrs []netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a.Unmap(), true
		}
	}
	if len(addrs) > 0 {
		return addrs[0], true
	}
	return netip.Addr{}, false
}
