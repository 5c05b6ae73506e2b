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
	"strings"
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

	mu        sync.Mutex
	services  map[string]*serviceState
	backends  map[string]*backendState
	frontends map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue
	// frontendsOf are the frontends last written for each service, so a
	// change to one service finds what to remove without a scan.
	frontendsOf map[string][]bpf.KmeshFrontendKey
	liveSlots   int // endpoint slots of the live generations: km_endpoint's fill
	// failed is set when a write failed midway: the next Update writes
	// the whole state (Apply) instead of its change.
	failed bool
	// orphans are entries whose delete failed: retried before each write.
	orphans    map[orphan]struct{}
	serviceIDs *idPool
	backendIDs *idPool
	stale      *staleEntries // left by a previous kmeshd; swept after the first Apply
	az         *authzState   // authorization maps (authz.go)
	// identityNode, when set, is the only node whose workloads' addresses
	// carry their identity in km_authz_addr (SetIdentityNode).
	identityNode string

	// Locality and client classes (lb.go).
	lbWorkload func(string) *model.Workload // the last applied mesh's, by key
	lbClasses  map[classKey]uint16
	lbClients  map[uint64]bpf.KmeshLbClient
	// lbClassFloor: class ids below it may still be in the maps (a
	// previous instance's classes this one has not resolved).
	lbClassFloor uint16
	tunnels      map[bpf.KmeshAuthzAddrKey]struct{} // km_tunnel as written (tunnel.go); nil until read
	tunnelSrc    map[uint64]bpf.KmeshBackendValue   // km_tunnel_src as written (tunnelsrc.go); nil until read
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
		maps:        maps,
		limits:      limits,
		log:         log,
		services:    map[string]*serviceState{},
		backends:    map[string]*backendState{},
		frontends:   map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue{},
		frontendsOf: map[string][]bpf.KmeshFrontendKey{},
		orphans:     map[orphan]struct{}{},
		serviceIDs:  newIDPool("service", limits.Services),
		backendIDs:  newIDPool("backend", 0),
		az:          newAuthzState(limits),

		lbWorkload: func(string) *model.Workload { return nil },
		lbClasses:  map[classKey]uint16{},
		lbClients:  map[uint64]bpf.KmeshLbClient{},
	}
	if err := d.scanAuthzStale(); err != nil {
		return nil, err
	}
	stale, err := scanStale(maps)
	if err != nil {
		return nil, err
	}
	if d.lbClients, err = scanClients(maps); err != nil {
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

// FollowState makes the dataplane look workloads up (the localities of
// endpoints and clients, lb.go) in st, the state the caller keeps of the
// mesh the last Apply wrote, as Update does. Until then it uses the
// translation's own index of that mesh, which keeps a map and a key string
// per workload alive (after a full Apply of State.Mesh(), a whole copy of
// the mesh) until the next change.
func (d *Dataplane) FollowState(st *model.State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lbWorkload = st.Workload
}

// Apply makes the maps hold m: the full state, at start-up (it adopts a
// previous instance's entries, see stale.go) and on resyncs. When m does
// not fit the maps it returns an error naming the map and the flag that
// sizes it, and writes nothing. Update does the same for a change.
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
	prevWorkload := d.lbWorkload
	// The map alone, not want: the closure lives until the next Update,
	// and want's backend and frontend maps are garbage after this Apply.
	byKey := want.workloads
	d.lbWorkload = func(k string) *model.Workload { return byKey[k] }
	defer func() {
		if err != nil {
			d.lbWorkload = prevWorkload
		}
	}()
	d.presize(want)
	if d.stale != nil {
		d.adopt(want)
	}
	p := &plan{want: want}
	for key := range d.services {
		if want.services[key] == nil {
			p.goneServices = append(p.goneServices, key)
		}
	}
	for k := range d.frontends {
		if _, ok := want.frontends[k]; !ok {
			p.goneFrontends = append(p.goneFrontends, k)
		}
	}
	for key := range d.backends {
		if _, ok := want.backends[key]; !ok {
			p.goneBackends = append(p.goneBackends, key)
		}
	}
	return d.write(p, wantAZ)
}

// presize makes the records of empty maps as large as want fills them: a
// first sync into fresh maps fills them from nothing, and growing them
// through every doubling rehashed each several times.
func (d *Dataplane) presize(want *desired) {
	if len(d.backends) == 0 {
		d.backends = make(map[string]*backendState, len(want.backends))
	}
	if len(d.services) == 0 {
		d.services = make(map[string]*serviceState, len(want.services))
	}
	if len(d.frontends) == 0 {
		d.frontends = make(map[bpf.KmeshFrontendKey]bpf.KmeshFrontendValue, len(want.frontends))
	}
}

// plan is the service map writes of one Apply or Update: the entries of
// want (each skipped when the maps hold it already) and the keys to remove.
type plan struct {
	want          *desired
	goneServices  []string
	goneFrontends []bpf.KmeshFrontendKey
	goneBackends  []string
	authz         *authzDelta // Update's writes to the authorization maps, if any
}

// write checks capacity, then writes p in the safe order: backends, then
// each service's slots and generation flip, then frontends; then removes
// frontends, services and backends; then the authorization maps (wantAZ
// nil: they stay as they are). A failed write leaves the record of what
// the maps hold exact, so the next Apply or Update converges from there.
func (d *Dataplane) write(p *plan, wantAZ *desiredAuthz) error {
	if err := d.checkCapacity(p); err != nil {
		return err
	}
	err := d.writePlan(p, wantAZ)
	if err == nil {
		// A delete refused on the way is tried once more now; if it
		// still fails the caller retries the whole write.
		err = d.deleteOrphans()
	}
	d.failed = err != nil
	return err
}

func (d *Dataplane) writePlan(p *plan, wantAZ *desiredAuthz) error {
	if err := d.deleteOrphans(); err != nil {
		return err
	}
	var policies map[string]*compiledPolicy
	var err error
	switch delta := p.authz; {
	case wantAZ != nil:
		if policies, err = d.compileAuthz(wantAZ.policies, wantAZ.ids, wantAZ.idsHash); err != nil {
			return err
		}
		if err := d.checkAuthzCapacity(policies, &wantAZ.glob, wantAZ.addrs); err != nil {
			return err
		}
	case delta != nil:
		if policies, err = d.compileAuthz(delta.policies, d.az.ix.ids, delta.idsHash); err != nil {
			return err
		}
		if err := d.checkAuthzCapacity(policies, delta.glob, delta.addrs); err != nil {
			return err
		}
	}
	var slots []serviceSlots
	if err := d.applyBackends(p.want, func() { slots = d.slotTables(p.want) }); err != nil {
		return err
	}
	if err := d.applyServices(slots); err != nil {
		return err
	}
	if err := d.applyFrontends(p); err != nil {
		return err
	}
	if err := d.removeServices(p.goneServices); err != nil {
		return err
	}
	if err := d.removeBackends(p.goneBackends); err != nil {
		return err
	}
	if d.stale != nil {
		if err := d.sweepStale(); err != nil {
			return err
		}
	}
	switch {
	case wantAZ != nil:
		return d.applyAuthz(wantAZ, policies)
	case p.authz != nil:
		return d.applyAuthzDelta(p.authz, policies)
	}
	return nil
}

// applyBackends writes want's backends that changed, giving new ones ids,
// and calls meanwhile once the ids are given, before it returns; not when
// an id cannot be given.
func (d *Dataplane) applyBackends(want *desired, meanwhile func()) error {
	// Only what changed, in name order, so ids follow names and dumps are
	// reproducible; sorting all backends would cost more than the writes.
	// Each carries its value and record, found once: at 500,000 backends
	// each further lookup by name cost a tenth of a second.
	type write struct {
		key   string
		value bpf.KmeshBackendValue
		cur   *backendState // nil until given an id here
	}
	changed := make([]write, 0, len(want.backends)) // all of them in a first sync
	add := func(key string, v bpf.KmeshBackendValue) {
		if cur := d.backends[key]; cur == nil || cur.value != v {
			changed = append(changed, write{key, v, cur})
		}
	}
	if want.order != nil {
		for _, b := range want.order {
			add(b.key, b.value)
		}
	} else {
		for key, v := range want.backends {
			add(key, v)
		}
		slices.SortFunc(changed, func(a, b write) int { return strings.Compare(a.key, b.key) })
	}
	ids := make([]uint32, 0, len(changed))
	values := make([]bpf.KmeshBackendValue, 0, len(changed))
	added := make([]bool, 0, len(changed)) // given an id here
	var idErr error
	for i := range changed {
		w := &changed[i]
		isNew := w.cur == nil
		if isNew {
			id, err := d.backendIDs.get()
			if err != nil {
				idErr = err // write those before it, as one at a time would
				break
			}
			w.cur = &backendState{id: id}
		}
		added = append(added, isNew)
		ids = append(ids, w.cur.id)
		values = append(values, w.value)
	}
	record := func() {
		for i, w := range changed[:len(ids)] {
			if added[i] {
				d.backends[w.key] = w.cur
			}
		}
	}
	var n int
	var err error
	if idErr == nil && len(ids) >= 1024 {
		// The kernel writes the backends on another core while this one
		// records them and runs meanwhile (the services' slot tables,
		// which need only the records' ids): at 500,000 backends the
		// write is ~0.6 s of kernel time, the records ~0.3 s and the
		// slot tables ~0.3 s, and nothing else of the first sync's
		// writes can run beside them.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			n, err = putMany(d.maps.KmBackend, ids, values)
		}()
		record()
		meanwhile()
		<-wrote
	} else {
		record()
		n, err = putMany(d.maps.KmBackend, ids, values)
		if idErr == nil {
			meanwhile()
		}
	}
	for i := range min(n, len(ids)) {
		changed[i].cur.value = values[i]
	}
	if err != nil {
		n = min(n, len(ids)-1) // the entry that failed
		// As one write at a time would have left it: the backends before
		// the failed one written, the failed one with an id and no value,
		// none after it (their ids go back last first, so the pool hands
		// them out again in the same order).
		for i := len(ids) - 1; i > n; i-- {
			if added[i] {
				delete(d.backends, changed[i].key)
				d.backendIDs.put(ids[i])
			}
		}
		return fmt.Errorf("workload %s: write backend %d: %w", changed[n].key, ids[n], mapErr(bpf.KmeshMapKmBackend, err))
	}
	return idErr
}

// serviceSlots is a service to write and its slot tables (a new plain
// one is written in a batch, writeNewServices).
type serviceSlots struct {
	key   string
	ws    *desiredService
	slots [2][]uint32
}

// slotTables returns want's services that changed, in name order, with
// their slot tables: backend ids, so after applyBackends gave them.
func (d *Dataplane) slotTables(want *desired) []serviceSlots {
	var out []serviceSlots
	for key, ws := range want.services {
		if !d.services[key].unchanged(ws) {
			out = append(out, serviceSlots{key: key, ws: ws})
		}
	}
	slices.SortFunc(out, func(a, b serviceSlots) int { return strings.Compare(a.key, b.key) })
	for i := range out {
		for fam, eps := range out[i].ws.endpoints {
			in := make([]weighted, len(eps))
			for j, e := range eps {
				in[j] = weighted{backend: d.backends[e.workload].id, weight: e.weight}
			}
			out[i].slots[fam] = expandSlots(in)
		}
	}
	return out
}

// applyServices writes the services slotTables returned.
func (d *Dataplane) applyServices(changed []serviceSlots) error {
	// New plain services in a row are written together (writeNewServices),
	// each other one alone, in name order either way: ids follow names.
	var batch []serviceSlots
	for _, c := range changed {
		cur := d.services[c.key]
		if cur == nil && plain(c.ws) {
			batch = append(batch, c)
			continue
		}
		if err := d.writeNewServices(batch); err != nil {
			return err
		}
		batch = batch[:0]
		if err := d.writeService(c.key, cur, c.ws, c.slots); err != nil {
			return err
		}
	}
	return d.writeNewServices(batch)
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
			// Undo this family's slots and those written before it.
			for f := 0; f <= fam; f++ {
				d.deleteSlots(cur.id, uint8(f), next.Gen, len(slots[f]))
			}
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
			d.liveSlots -= len(cur.slots[fam])
		}
	}
	d.liveSlots += len(slots[0]) + len(slots[1])
	d.afterFlipLB(cur.id, cur.lb, lb)
	cur.value, cur.slots, cur.endpoints, cur.lb, cur.desired = next, slots, ws.endpoints, lb, ws
	d.services[key] = cur
	return nil
}

func (d *Dataplane) putSlots(id uint32, fam, gen uint8, backends []uint32) error {
	keys := make([]bpf.KmeshEndpointKey, len(backends))
	values := make([]bpf.KmeshEndpointValue, len(backends))
	for i, b := range backends {
		keys[i] = bpf.KmeshEndpointKey{ServiceId: id, Family: fam, Gen: gen, Slot: uint32(i)}
		values[i] = bpf.KmeshEndpointValue{BackendId: b}
	}
	if n, err := putMany(d.maps.KmEndpoint, keys, values); err != nil {
		return fmt.Errorf("write endpoint slot %d: %w", n, mapErr(bpf.KmeshMapKmEndpoint, err))
	}
	return nil
}

// deleteSlots removes slots 0..n-1; missing ones are fine, so a failed
// write can be undone with it. A delete that fails is remembered and
// retried (orphans.go).
func (d *Dataplane) deleteSlots(id uint32, fam, gen uint8, n int) {
	for i := range n {
		k := bpf.KmeshEndpointKey{ServiceId: id, Family: fam, Gen: gen, Slot: uint32(i)}
		d.deleteOrRemember(d.maps.KmEndpoint, bpf.KmeshMapKmEndpoint, k)
	}
}

func (d *Dataplane) applyFrontends(p *plan) error {
	var keys []bpf.KmeshFrontendKey
	var values []bpf.KmeshFrontendValue
	for k, wf := range p.want.frontends {
		v := bpf.KmeshFrontendValue{ServiceId: d.services[wf.service].id, TargetPort: wf.targetPort}
		if cur, ok := d.frontends[k]; ok && cur == v {
			continue
		}
		keys, values = append(keys, k), append(values, v)
	}
	n, err := putMany(d.maps.KmFrontend, keys, values)
	for i := range min(n, len(keys)) {
		d.frontends[keys[i]] = values[i]
	}
	if err != nil {
		k := keys[min(n, len(keys)-1)]
		return fmt.Errorf("service %s: write frontend %s:%d: %w", p.want.frontends[k].service, bpf.WordsAddr(k.Addr), bpf.NetPort(k.Port), mapErr(bpf.KmeshMapKmFrontend, err))
	}
	for _, k := range p.goneFrontends {
		if _, ok := d.frontends[k]; !ok {
			continue
		}
		if err := d.maps.KmFrontend.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete frontend %s:%d: %w", bpf.WordsAddr(k.Addr), bpf.NetPort(k.Port), err)
		}
		delete(d.frontends, k)
	}
	for key, ws := range p.want.services {
		d.frontendsOf[key] = ws.frontends
	}
	return nil
}

func (d *Dataplane) removeServices(keys []string) error {
	for _, key := range keys {
		cur := d.services[key]
		if cur == nil {
			continue
		}
		if err := d.maps.KmService.Delete(cur.id); err != nil && !isNotExist(err) {
			return fmt.Errorf("service %s: delete service %d: %w", key, cur.id, err)
		}
		for fam := range cur.slots {
			d.deleteSlots(cur.id, uint8(fam), cur.value.Gen, len(cur.slots[fam]))
			d.liveSlots -= len(cur.slots[fam])
		}
		d.removeLB(cur.id, cur.lb)
		d.serviceIDs.put(cur.id)
		delete(d.services, key)
		delete(d.frontendsOf, key)
	}
	return nil
}

func (d *Dataplane) removeBackends(keys []string) error {
	for _, key := range keys {
		cur := d.backends[key]
		if cur == nil {
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
