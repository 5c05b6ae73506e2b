package dataplane

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// plain reports whether ws asks nothing of the balancer beyond its slot
// table: no locality tables, Maglev table, affinity or outlier entries.
func plain(ws *desiredService) bool {
	return ws.lbMode != uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV) &&
		(ws.lb == nil || (ws.lb.flags == 0 && ws.lb.locality == nil))
}

// writeNewServices writes new plain services as writeService writes each
// of them, one step for all of them at a time: their round robin and
// ejections reset, their slots, then the services, each step one batch.
// A first sync of 50,000 services made four calls per service. The order
// is as safe for a concurrent connect(): a service appears only once its
// slots are written. When a write fails, the services written before it
// stay (and are recorded), as one at a time would leave them, and nothing
// of the others is left in the maps.
func (d *Dataplane) writeNewServices(batch []serviceSlots) error {
	if len(batch) == 0 {
		return nil
	}
	ids := make([]uint32, 0, len(batch))
	var idErr error
	for _, s := range batch {
		id, err := d.serviceIDs.get()
		if err != nil {
			idErr = fmt.Errorf("service %s: %w (raise --max-services)", s.key, err)
			break
		}
		ids = append(ids, id)
	}
	batch = batch[:len(ids)]
	// The ids from i on go back last first, so the pool hands them out
	// again in the same order.
	giveBack := func(from int) {
		for i := len(ids) - 1; i >= from; i-- {
			d.serviceIDs.put(ids[i])
		}
	}
	failed := func(n int) string { return batch[min(n, len(batch)-1)].key }
	if len(ids) == 0 {
		return idErr
	}

	// An id may have served a removed service: its round robin starts
	// over, and it has no ejections.
	if n, err := putMany(d.maps.KmRr, ids, make([]uint32, len(ids))); err != nil {
		giveBack(0)
		return fmt.Errorf("service %s: reset round robin: %w", failed(n), mapErr(bpf.KmeshMapKmRr, err))
	}
	if n, err := putMany(d.maps.KmLbEject, ids, make([]bpf.KmeshLbEject, len(ids))); err != nil {
		giveBack(0)
		return fmt.Errorf("service %s: reset ejections: %w", failed(n), mapErr(bpf.KmeshMapKmLbEject, err))
	}

	// A new service's first generation is 0 (writeService: 1 ^ 1).
	const gen = 0
	first := make([]int, len(batch)+1) // service i's slots are keys[first[i]:first[i+1]]
	for i, s := range batch {
		first[i+1] = first[i] + len(s.slots[0]) + len(s.slots[1])
	}
	keys := make([]bpf.KmeshEndpointKey, 0, first[len(batch)])
	values := make([]bpf.KmeshEndpointValue, 0, first[len(batch)])
	for i, s := range batch {
		for fam, slots := range s.slots {
			for j, b := range slots {
				keys = append(keys, bpf.KmeshEndpointKey{ServiceId: ids[i], Family: uint8(fam), Gen: gen, Slot: uint32(j)})
				values = append(values, bpf.KmeshEndpointValue{BackendId: b})
			}
		}
	}
	undoSlots := func(keys []bpf.KmeshEndpointKey) {
		for _, k := range keys {
			d.deleteOrRemember(d.maps.KmEndpoint, bpf.KmeshMapKmEndpoint, k)
		}
	}
	if n, err := d.putSlotsAtOnce(keys, values, undoSlots); err != nil {
		undoSlots(keys[:n])
		f := min(n, len(keys)-1)
		i := 0
		for first[i+1] <= f {
			i++
		}
		giveBack(0)
		return fmt.Errorf("service %s: write endpoint slot %d: %w", batch[i].key, keys[f].Slot, mapErr(bpf.KmeshMapKmEndpoint, err))
	}

	services := make([]bpf.KmeshServiceValue, len(batch))
	for i, s := range batch {
		services[i] = bpf.KmeshServiceValue{LbMode: s.ws.lbMode, Gen: gen,
			Slots: [2]uint32{uint32(len(s.slots[0])), uint32(len(s.slots[1]))}}
	}
	n, err := putMany(d.maps.KmService, ids, services)
	n = min(n, len(batch))
	for i, s := range batch[:n] {
		sp := s.ws.lb
		if sp == nil {
			sp = &lbSpec{}
		}
		d.services[s.key] = &serviceState{id: ids[i], value: services[i], endpoints: s.ws.endpoints, slots: s.slots,
			lb: &lbState{spec: sp, members: map[uint32]bool{}}, desired: s.ws}
		d.liveSlots += len(s.slots[0]) + len(s.slots[1])
	}
	if err != nil {
		undoSlots(keys[first[n]:])
		giveBack(n)
		return fmt.Errorf("service %s: write service %d: %w", failed(n), ids[min(n, len(ids)-1)], mapErr(bpf.KmeshMapKmService, err))
	}
	return idErr
}

// putSlotsAtOnce is putMany of the slots, in two halves at once when they
// are many: at 500,000 slots the kernel's writes are ~0.6 s, with nothing
// of the first sync on the other core by then (the model state built, the
// backends written). What putMany returns, as if one batch: when the first
// half fails, what the second wrote is undone (undo), so only slots before
// the failed one can be in the map.
func (d *Dataplane) putSlotsAtOnce(keys []bpf.KmeshEndpointKey, values []bpf.KmeshEndpointValue, undo func([]bpf.KmeshEndpointKey)) (int, error) {
	if len(keys) < 4096 {
		return putMany(d.maps.KmEndpoint, keys, values)
	}
	h := len(keys) / 2
	var n2 int
	var err2 error
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		n2, err2 = putMany(d.maps.KmEndpoint, keys[h:], values[h:])
	}()
	n, err := putMany(d.maps.KmEndpoint, keys[:h], values[:h])
	<-wrote
	switch {
	case err != nil:
		undo(keys[h : h+n2])
		return n, err
	case err2 != nil:
		return h + n2, err2
	}
	return len(keys), nil
}
