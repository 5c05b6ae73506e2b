package dataplane

import (
	"maps"
	"slices"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Update writes one change: st already holds it (model.State.Apply), c
// says what it touched. Only the map entries of the services c changes or
// removes, and of the services whose endpoints c changes, are translated
// and written, in Apply's order (write): O(what c touches), not O(mesh).
// The authorization maps get the entries of the workloads and policies c
// touches (authzChange); they are recomputed from st only when the first
// policy comes or the last one goes.
//
// On error nothing is undone in the maps, but the dataplane's record of
// them stays exact, so an Apply or Update of the state the caller keeps
// (after undoing st) converges. A capacity refusal writes nothing.
func (d *Dataplane) Update(c *model.Changes, st *model.State) error {
	d.mu.Lock()
	full := d.stale != nil || d.failed
	d.mu.Unlock()
	if full {
		// Adoption needs the whole state (once, at start-up); after a
		// failed write, entries of the failed change may be anywhere.
		if err := d.Apply(st.Mesh()); err != nil {
			return err
		}
		d.FollowState(st) // not the snapshot's copy of every workload
		return nil
	}
	if c.Empty() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Localities of endpoints and clients come from the state (lb.go).
	d.lbWorkload = st.Workload

	dirty := map[string]bool{}
	for _, s := range c.Services {
		dirty[s.Key()] = true
	}
	for _, k := range c.RemovedServices {
		dirty[k] = true
	}
	// A workload's addresses and weight shape the slots of each service
	// it serves.
	candidates := map[string]bool{}
	for _, w := range c.Workloads {
		candidates[w.Key()] = true
		for _, sk := range st.Users(w.Key()) {
			dirty[sk] = true
		}
	}
	for _, k := range c.RemovedWorkloads {
		candidates[k] = true
	}

	p := &plan{want: newDesired(len(dirty))}
	for _, key := range slices.Sorted(maps.Keys(dirty)) {
		if cur := d.services[key]; cur != nil {
			for _, eps := range cur.endpoints {
				for _, e := range eps {
					candidates[e.workload] = true
				}
			}
		}
		s := st.Service(key)
		if s == nil {
			if d.services[key] != nil {
				p.goneServices = append(p.goneServices, key)
			}
			p.goneFrontends = append(p.goneFrontends, d.frontendsOf[key]...)
			continue
		}
		if err := p.want.addService(s, st.Workload); err != nil {
			return err
		}
		for _, k := range d.frontendsOf[key] {
			if _, ok := p.want.frontends[k]; !ok {
				p.goneFrontends = append(p.goneFrontends, k)
			}
		}
	}
	// Changed workloads keep their backend while a service uses them;
	// the rest of the candidates go when nothing uses them any more.
	for k := range candidates {
		if _, ok := p.want.backends[k]; ok {
			continue
		}
		if w := st.Workload(k); w != nil && len(st.Users(k)) > 0 {
			if v, ok := backendValue(w.Addresses); ok {
				p.want.backends[k] = v
				continue
			}
		}
		if d.backends[k] != nil {
			p.goneBackends = append(p.goneBackends, k)
		}
	}

	var wantAZ *desiredAuthz
	has, had := st.HasPolicies(), d.az.ix != nil
	touched := len(c.Policies)+len(c.RemovedPolicies)+len(c.Workloads)+len(c.RemovedWorkloads) > 0
	switch {
	case has && had && d.az.stale == nil:
		if touched {
			// Only the entries the change touches (authz_update.go).
			var err error
			if p.authz, err = d.authzChange(c); err != nil {
				d.failed = true // the index may be half changed
				return err
			}
		}
	case has || had || len(d.az.policies) > 0:
		// The first policy gives every workload address an entry, the
		// last one takes them all away: the whole mesh either way.
		var err error
		if wantAZ, err = translateAuthz(st.Mesh(), d.identityNode); err != nil {
			return err
		}
	}
	return d.write(p, wantAZ)
}
