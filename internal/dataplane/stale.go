package dataplane

import (
	"fmt"
	"slices"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// staleEntries are what a previous kmeshd left in pinned maps. They keep
// serving connections until the first full state is written. That state
// adopts every entry it would write the same way (adopt), so a restart with
// an unchanged config rewrites nothing and needs no room for a second copy
// of the mesh; whatever is left after it is removed (sweepStale).
type staleEntries struct {
	services  map[uint32]bpf.KmeshServiceValue
	backends  map[uint32]bpf.KmeshBackendValue
	frontends map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue
	endpoints map[bpf.KmeshEndpointKey]uint32 // slot -> backend id, also locality groups'
	prios     map[bpf.KmeshLbPrioKey]bpf.KmeshLbPrio
	priosOf   map[uint32]int // km_lb_prio entries per service id
}

func (s *staleEntries) empty() bool {
	return len(s.services)+len(s.backends)+len(s.frontends)+len(s.endpoints)+len(s.prios) == 0
}

func scanStale(maps *Store) (*staleEntries, error) {
	s := &staleEntries{
		services:  map[uint32]bpf.KmeshServiceValue{},
		backends:  map[uint32]bpf.KmeshBackendValue{},
		frontends: map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue{},
		endpoints: map[bpf.KmeshEndpointKey]uint32{},
		prios:     map[bpf.KmeshLbPrioKey]bpf.KmeshLbPrio{},
		priosOf:   map[uint32]int{},
	}
	var id uint32
	var sv bpf.KmeshServiceValue
	it := maps.KmService.Iterate()
	for it.Next(&id, &sv) {
		s.services[id] = sv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmService, err)
	}
	var bv bpf.KmeshBackendValue
	it = maps.KmBackend.Iterate()
	for it.Next(&id, &bv) {
		s.backends[id] = bv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmBackend, err)
	}
	var fk bpf.KmeshFrontendKey
	var fv bpf.KmeshFrontendValue
	it = maps.KmFrontend.Iterate()
	for it.Next(&fk, &fv) {
		s.frontends[fk] = fv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmFrontend, err)
	}
	var ek bpf.KmeshEndpointKey
	var ev bpf.KmeshEndpointValue
	it = maps.KmEndpoint.Iterate()
	for it.Next(&ek, &ev) {
		s.endpoints[ek] = ev.BackendId
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEndpoint, err)
	}
	var pk bpf.KmeshLbPrioKey
	var pv bpf.KmeshLbPrio
	it = maps.KmLbPrio.Iterate()
	for it.Next(&pk, &pv) {
		s.prios[pk] = pv
		if sv, ok := s.services[pk.ServiceId]; ok && pk.Gen == sv.Gen {
			s.priosOf[pk.ServiceId]++ // the live generation's, adopted or not
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmLbPrio, err)
	}
	return s, nil
}

// scanClients reads km_lb_client: the previous instance's clients stay as
// written until ApplyNetns says otherwise, so a restart rewrites none.
func scanClients(maps *Store) (map[uint64]bpf.KmeshLbClient, error) {
	out := map[uint64]bpf.KmeshLbClient{}
	var cookie uint64
	var v bpf.KmeshLbClient
	it := maps.KmLbClient.Iterate()
	for it.Next(&cookie, &v) {
		out[cookie] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmLbClient, err)
	}
	return out, nil
}

// adopt takes over the previous instance's entries that want describes:
// backends by their addresses, services by their frontends, and a
// service's live slots when they are the ones want gives it.
func (d *Dataplane) adopt(want *desired) {
	s := d.stale
	d.adoptClasses(want)
	byValue := map[bpf.KmeshBackendValue][]uint32{}
	for id, v := range s.backends {
		byValue[v] = append(byValue[v], id)
	}
	for key, v := range want.backends {
		ids := byValue[v]
		if len(ids) == 0 {
			continue
		}
		id := ids[len(ids)-1]
		byValue[v] = ids[:len(ids)-1]
		d.backends[key] = &backendState{id: id, value: v}
		delete(s.backends, id)
	}

	for k, wf := range want.frontends {
		fv, ok := s.frontends[k]
		if !ok {
			continue
		}
		if d.services[wf.service] == nil {
			sv, ok := s.services[fv.ServiceId]
			if !ok {
				continue
			}
			d.adoptService(wf.service, fv.ServiceId, sv, want.services[wf.service])
		}
		if cur := d.services[wf.service]; cur != nil && cur.id == fv.ServiceId && fv.TargetPort == wf.targetPort {
			d.frontends[k] = fv
			delete(s.frontends, k)
		}
	}
}

// adoptService takes over service id with its live slots. When the slots
// are the ones ws asks for, the service counts as unchanged; otherwise the
// first apply writes the other generation and flips to it, as any update.
func (d *Dataplane) adoptService(key string, id uint32, sv bpf.KmeshServiceValue, ws *desiredService) {
	s := d.stale
	cur := &serviceState{id: id, value: sv}
	for fam := range cur.slots {
		n := sv.Slots[fam]
		cur.slots[fam] = make([]uint32, 0, n)
		for i := range n {
			k := bpf.KmeshEndpointKey{ServiceId: id, Family: uint8(fam), Gen: sv.Gen, Slot: i}
			b, ok := s.endpoints[k]
			if !ok {
				break // a torn table: let the update rewrite it
			}
			cur.slots[fam] = append(cur.slots[fam], b)
		}
	}
	// The live slots are ours now; leftovers of the other generation (a
	// previous instance stopped mid-update) are swept.
	for fam := range cur.slots {
		for i := range cur.slots[fam] {
			delete(s.endpoints, bpf.KmeshEndpointKey{ServiceId: id, Family: uint8(fam), Gen: sv.Gen, Slot: uint32(i)})
		}
	}
	d.liveSlots += len(cur.slots[0]) + len(cur.slots[1])
	if ws != nil && sv.LbMode == ws.lbMode {
		want := d.slotsFor(ws)
		if slices.Equal(want[0], cur.slots[0]) && slices.Equal(want[1], cur.slots[1]) {
			if lb, ok := d.adoptLB(id, sv, ws); ok {
				cur.endpoints, cur.lb, cur.desired = ws.endpoints, lb, ws
			}
		}
	}
	d.services[key] = cur
	delete(s.services, id)
}

// slotsFor computes ws's slot tables, or nothing when a backend has no id
// yet (then the service is not unchanged anyway).
func (d *Dataplane) slotsFor(ws *desiredService) (slots [2][]uint32) {
	for fam, eps := range ws.endpoints {
		in := make([]weighted, len(eps))
		for i, e := range eps {
			b := d.backends[e.workload]
			if b == nil {
				return [2][]uint32{}
			}
			in[i] = weighted{backend: b.id, weight: e.weight}
		}
		slots[fam] = expandSlots(in)
	}
	return slots
}

// sweepStale removes the previous instance's entries that the first full
// state did not adopt: frontends first, then services, slots, backends.
func (d *Dataplane) sweepStale() error {
	s := d.stale
	for k := range s.frontends {
		if _, ours := d.frontends[k]; ours {
			continue
		}
		if err := d.maps.KmFrontend.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep frontend %s:%d: %w", bpf.WordsAddr(k.Addr), bpf.NetPort(k.Port), err)
		}
	}
	for id := range s.services {
		if err := d.maps.KmService.Delete(id); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep service %d: %w", id, err)
		}
	}
	live := map[uint32]*serviceState{}
	for _, cur := range d.services {
		live[cur.id] = cur
	}
	for k := range s.endpoints {
		// An adopted service may have flipped to the generation a stale
		// leftover was in: its live slots stay.
		if cur := live[k.ServiceId]; cur != nil && k.Gen == cur.value.Gen && cur.holds(k) {
			continue
		}
		if err := d.maps.KmEndpoint.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep endpoint slot %+v: %w", k, err)
		}
	}
	for k := range s.prios {
		// The same for a rewritten locality service's priorities.
		if cur := live[k.ServiceId]; cur != nil && cur.lb != nil && slices.Contains(cur.lb.prios, k) {
			continue
		}
		if err := d.maps.KmLbPrio.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep priorities %+v: %w", k, err)
		}
	}
	for id := range s.backends {
		if err := d.maps.KmBackend.Delete(id); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep backend %d: %w", id, err)
		}
	}
	for id := range s.services {
		d.serviceIDs.put(id)
	}
	for id := range s.backends {
		d.backendIDs.put(id)
	}
	d.log.Info("removed entries of a previous instance", "services", len(s.services), "backends", len(s.backends), "priorities", len(s.prios))
	d.stale = nil
	return nil
}

// holds reports whether k is one of the service's live entries: a slot of
// its table (group 0) or of one of its locality groups.
func (s *serviceState) holds(k bpf.KmeshEndpointKey) bool {
	if k.Group == 0 {
		return k.Slot < uint32(len(s.slots[k.Family&1]))
	}
	if s.lb == nil {
		return false
	}
	for _, g := range s.lb.groups {
		if g.family == k.Family && g.gen == k.Gen && g.group == k.Group && k.Slot < uint32(g.n) {
			return true
		}
	}
	return false
}
