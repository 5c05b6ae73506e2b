// Package dataplane writes the mesh model into the BPF maps. It is the only
// writer of the service maps: it gives services and backends stable ids,
// diffs each new model against what the maps hold, and writes the changes in
// an order that keeps every intermediate state valid for a concurrent
// connect(): backends before the slots that name them, slots before the
// service that counts them, services before the frontends that point to
// them; and on removal the reverse. It writes the authorization maps the
// same way (authz.go): policies before the lists that name them, lists
// before the workloads that point to them.
package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Dataplane holds what it wrote to the maps, to diff the next model against.
type Dataplane struct {
	maps   *Store
	limits bpf.Limits
	log    *slog.Logger

	mu         sync.Mutex
	services   map[string]*serviceState
	backends   map[string]*backendState
	frontends  map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue
	serviceIDs *idPool
	backendIDs *idPool
	stale      *staleEntries // left by a previous kmeshd; swept after the first Apply
	az         *authzState   // authorization maps (authz.go)
	// identityNode, when set, is the only node whose workloads' addresses
	// carry their identity in km_authz_addr (SetIdentityNode).
	identityNode string

	// Locality and client classes (lb.go).
	lbWorkloads map[string]*model.Workload // of the last applied mesh
	lbClasses   map[classKey]uint16
	lbClients   map[uint64]bpf.KmeshLbClient
}

type serviceState struct {
	id        uint32
	value     bpf.KmeshServiceValue
	endpoints [2][]weightedWorkload // as last applied, per family
	slots     [2][]uint32           // backend ids of the live generation, per family
	lb        *lbState              // locality tables, affinity and outlier entries (lb.go)
	desired   *desiredService       // as last applied, to rewrite for a new client class
}

// unchanged reports whether ws would write the same slots: backend ids are
// stable while their workload exists, so equal endpoint lists give equal
// slot tables.
func (s *serviceState) unchanged(ws *desiredService) bool {
	return s != nil && s.value.LbMode == ws.lbMode && lbUnchanged(s.lb, ws.lb) &&
		slices.Equal(s.endpoints[0], ws.endpoints[0]) && slices.Equal(s.endpoints[1], ws.endpoints[1])
}

type backendState struct {
	id    uint32
	value bpf.KmeshBackendValue
}

// SetIdentityNode makes the addresses of node's workloads the only ones
// that carry an identity in km_authz_addr; every other address is a
// source with no principal. kmeshd sets it when the mesh has a CA: then a
// connection from another node proves its identity with a certificate,
// through the tunnel (which the kernel's check leaves to it), and a
// plaintext one from another node has none, whatever address it comes
// from; only this node's addresses, which kmeshd knows from the netns it
// enrolled, still stand for an identity. Takes effect at the next Apply.
func (d *Dataplane) SetIdentityNode(node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.identityNode = node
}

// New returns a dataplane writing to maps. Entries already in the maps (a
// previous kmeshd's) stay in force until the first Apply replaces them.
func New(maps *Store, limits bpf.Limits, log *slog.Logger) (*Dataplane, error) {
	d := &Dataplane{
		maps:       maps,
		limits:     limits,
		log:        log,
		services:   map[string]*serviceState{},
		backends:   map[string]*backendState{},
		frontends:  map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue{},
		serviceIDs: newIDPool("service", limits.Services),
		backendIDs: newIDPool("backend", 0),
		az:         newAuthzState(limits),

		lbWorkloads: map[string]*model.Workload{},
		lbClasses:   map[classKey]uint16{},
		lbClients:   map[uint64]bpf.KmeshLbClient{},
	}
	if err := d.scanAuthzStale(); err != nil {
		return nil, err
	}
	stale, err := scanStale(maps)
	if err != nil {
		return nil, err
	}
	for id := range stale.services {
		d.serviceIDs.reserve(id)
	}
	for id := range stale.backends {
		d.backendIDs.reserve(id)
	}
	if !stale.empty() {
		d.stale = stale
		log.Info("found entries of a previous instance", "services", len(stale.services), "backends", len(stale.backends), "frontends", len(stale.frontends))
	}
	return d, nil
}

// Apply makes the maps hold m. When m does not fit the maps it returns an
// error naming the map and the flag that sizes it, and writes nothing.
func (d *Dataplane) Apply(m *model.Mesh) (err error) {
	want, err := translate(m)
	if err != nil {
		return err
	}
	wantAZ, err := translateAuthz(m, d.identityNode)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	prevWorkloads := d.lbWorkloads
	d.lbWorkloads = want.workloads
	defer func() {
		if err != nil {
			d.lbWorkloads = prevWorkloads
		}
	}()
	if d.stale != nil {
		d.adopt(want)
	}
	if err := d.checkCapacity(want); err != nil {
		return err
	}
	policies, err := d.compileAuthz(wantAZ)
	if err != nil {
		return err
	}
	if err := d.checkAuthzCapacity(wantAZ, policies); err != nil {
		return err
	}
	if err := d.applyBackends(want); err != nil {
		return err
	}
	if err := d.applyServices(want); err != nil {
		return err
	}
	if err := d.applyFrontends(want); err != nil {
		return err
	}
	if err := d.removeServices(want); err != nil {
		return err
	}
	if err := d.removeBackends(want); err != nil {
		return err
	}
	if d.stale != nil {
		if err := d.sweepStale(); err != nil {
			return err
		}
	}
	return d.applyAuthz(wantAZ, policies)
}

func (d *Dataplane) applyBackends(want *desired) error {
	// Only what changed, in name order, so ids follow names and dumps are
	// reproducible; sorting all backends would cost more than the writes.
	var changed []string
	for key, v := range want.backends {
		if cur := d.backends[key]; cur == nil || cur.value != v {
			changed = append(changed, key)
		}
	}
	slices.Sort(changed)
	for _, key := range changed {
		v := want.backends[key]
		cur := d.backends[key]
		if cur == nil {
			id, err := d.backendIDs.get()
			if err != nil {
				return err
			}
			cur = &backendState{id: id}
			d.backends[key] = cur
		}
		if err := d.maps.KmBackend.Put(cur.id, v); err != nil {
			return fmt.Errorf("workload %s: write backend %d: %w", key, cur.id, mapErr(bpf.KmeshMapKmBackend, err))
		}
		cur.value = v
	}
	return nil
}

func (d *Dataplane) applyServices(want *desired) error {
	var changed []string
	for key, ws := range want.services {
		if !d.services[key].unchanged(ws) {
			changed = append(changed, key)
		}
	}
	slices.Sort(changed)
	for _, key := range changed {
		ws := want.services[key]
		cur := d.services[key]
		var slots [2][]uint32
		for fam, eps := range ws.endpoints {
			in := make([]weighted, len(eps))
			for i, e := range eps {
				in[i] = weighted{backend: d.backends[e.workload].id, weight: e.weight}
			}
			slots[fam] = expandSlots(in)
		}
		if err := d.writeService(key, cur, ws, slots); err != nil {
			return err
		}
	}
	return nil
}

// writeService writes the slots into the generation not in use, flips the
// service to it with one update, and then frees the old generation.
func (d *Dataplane) writeService(key string, cur *serviceState, ws *desiredService, slots [2][]uint32) error {
	isNew := cur == nil
	if isNew {
		id, err := d.serviceIDs.get()
		if err != nil {
			return fmt.Errorf("service %s: %w (raise --max-services)", key, err)
		}
		// The id may have served a removed service: its round robin starts over.
		if err := d.maps.KmRr.Put(id, uint32(0)); err != nil {
			d.serviceIDs.put(id)
			return fmt.Errorf("service %s: reset round robin: %w", key, mapErr(bpf.KmeshMapKmRr, err))
		}
		cur = &serviceState{id: id, value: bpf.KmeshServiceValue{Gen: 1}}
	}
	next := bpf.KmeshServiceValue{LbMode: ws.lbMode, Gen: cur.value.Gen ^ 1}
	for fam := range slots {
		next.Slots[fam] = uint32(len(slots[fam]))
		if err := d.putSlots(cur.id, uint8(fam), next.Gen, slots[fam]); err != nil {
			d.deleteSlots(cur.id, uint8(fam), next.Gen, len(slots[fam]))
			if isNew {
				d.serviceIDs.put(cur.id)
			}
			return fmt.Errorf("service %s: %w", key, err)
		}
	}
	flags, lb, err := d.writeLB(cur.id, isNew, cur.lb, ws, next.Gen)
	if err != nil {
		for fam := range slots {
			d.deleteSlots(cur.id, uint8(fam), next.Gen, len(slots[fam]))
		}
		if isNew {
			d.serviceIDs.put(cur.id)
		}
		return fmt.Errorf("service %s: %w", key, err)
	}
	next.Flags = flags
	if err := d.maps.KmService.Put(cur.id, next); err != nil {
		d.deleteLBGen(cur.id, lb)
		for fam := range slots {
			d.deleteSlots(cur.id, uint8(fam), next.Gen, len(slots[fam]))
		}
		if isNew {
			d.serviceIDs.put(cur.id)
		}
		return fmt.Errorf("service %s: write service %d: %w", key, cur.id, mapErr(bpf.KmeshMapKmService, err))
	}
	if !isNew {
		for fam := range cur.slots {
			d.deleteSlots(cur.id, uint8(fam), cur.value.Gen, len(cur.slots[fam]))
		}
	}
	d.afterFlipLB(cur.id, cur.lb, lb)
	cur.value, cur.slots, cur.endpoints, cur.lb, cur.desired = next, slots, ws.endpoints, lb, ws
	d.services[key] = cur
	return nil
}

func (d *Dataplane) putSlots(id uint32, fam, gen uint8, backends []uint32) error {
	for i, b := range backends {
		k := bpf.KmeshEndpointKey{ServiceId: id, Family: fam, Gen: gen, Slot: uint32(i)}
		if err := d.maps.KmEndpoint.Put(k, bpf.KmeshEndpointValue{BackendId: b}); err != nil {
			return fmt.Errorf("write endpoint slot %d: %w", i, mapErr(bpf.KmeshMapKmEndpoint, err))
		}
	}
	return nil
}

// deleteSlots removes slots 0..n-1; missing ones are fine, so a failed
// write can be undone with it.
func (d *Dataplane) deleteSlots(id uint32, fam, gen uint8, n int) {
	for i := range n {
		k := bpf.KmeshEndpointKey{ServiceId: id, Family: fam, Gen: gen, Slot: uint32(i)}
		if err := d.maps.KmEndpoint.Delete(k); err != nil && !isNotExist(err) {
			d.log.Warn("delete endpoint slot", "service_id", id, "slot", i, "err", err)
		}
	}
}

func (d *Dataplane) applyFrontends(want *desired) error {
	for k, wf := range want.frontends {
		v := bpf.KmeshFrontendValue{ServiceId: d.services[wf.service].id, TargetPort: wf.targetPort}
		if cur, ok := d.frontends[k]; ok && cur == v {
			continue
		}
		if err := d.maps.KmFrontend.Put(k, v); err != nil {
			return fmt.Errorf("service %s: write frontend %s:%d: %w", wf.service, bpf.WordsAddr(k.Addr), bpf.NetPort(k.Port), mapErr(bpf.KmeshMapKmFrontend, err))
		}
		d.frontends[k] = v
	}
	for k := range d.frontends {
		if _, ok := want.frontends[k]; ok {
			continue
		}
		if err := d.maps.KmFrontend.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete frontend %s:%d: %w", bpf.WordsAddr(k.Addr), bpf.NetPort(k.Port), err)
		}
		delete(d.frontends, k)
	}
	return nil
}

func (d *Dataplane) removeServices(want *desired) error {
	for key, cur := range d.services {
		if _, ok := want.services[key]; ok {
			continue
		}
		if err := d.maps.KmService.Delete(cur.id); err != nil && !isNotExist(err) {
			return fmt.Errorf("service %s: delete service %d: %w", key, cur.id, err)
		}
		for fam := range cur.slots {
			d.deleteSlots(cur.id, uint8(fam), cur.value.Gen, len(cur.slots[fam]))
		}
		d.removeLB(cur.id, cur.lb)
		d.serviceIDs.put(cur.id)
		delete(d.services, key)
	}
	return nil
}

func (d *Dataplane) removeBackends(want *desired) error {
	for key, cur := range d.backends {
		if _, ok := want.backends[key]; ok {
			continue
		}
		if err := d.maps.KmBackend.Delete(cur.id); err != nil && !isNotExist(err) {
			return fmt.Errorf("workload %s: delete backend %d: %w", key, cur.id, err)
		}
		d.backendIDs.put(cur.id)
		delete(d.backends, key)
	}
	return nil
}

func isNotExist(err error) bool { return err != nil && errors.Is(err, ebpf.ErrKeyNotExist) }
