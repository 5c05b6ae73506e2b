package dataplane

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// authzDelta is what one change writes to the authorization maps: the
// policies to compile and write, the address entries and the global list
// it touches, and the policies to remove once nothing refers to them.
type authzDelta struct {
	policies map[string]*model.Policy // new or changed; every policy when the identities changed
	removed  []string
	glob     *listSpec // nil: unchanged
	addrs    map[bpf.KmeshAuthzAddrKey]addrSpec
	gone     []bpf.KmeshAuthzAddrKey
	idsHash  uint64
}

// authzChange turns c into the authorization maps' writes, from the index
// of the mesh the maps hold (az.ix, which it updates to the mesh with c):
//   - a changed workload rewrites the entries of its old and new
//     addresses;
//   - a policy that is added or removed, or moves between lists (scope,
//     namespace, action), rewrites the entries of the workloads whose
//     lists it is in before or after (its namespace's, or those that list
//     it), or the global list;
//   - a policy whose rules alone change is recompiled into its other
//     generation; no list or address entry changes;
//   - an identity that appears or leaves (the first or last workload of a
//     service account) recompiles every policy, since a match stores the
//     identities it holds or lacks; only those that compile differently
//     are written.
//
// So one workload change costs its own entries, whatever the number of
// policies and workloads. On error the index is not undone: the caller
// makes the next write a full Apply (d.failed).
func (d *Dataplane) authzChange(c *model.Changes) (*authzDelta, error) {
	az := d.az
	ix := az.ix
	delta := &authzDelta{policies: map[string]*model.Policy{}, addrs: map[bpf.KmeshAuthzAddrKey]addrSpec{}, idsHash: az.idsHash}
	touched := map[netip.Addr]struct{}{}
	touch := func(key string) {
		if w := ix.workloads[key]; w != nil {
			for _, a := range w.Addresses {
				touched[a.Unmap()] = struct{}{}
			}
		}
	}
	glob := false
	// Policies whose lists change: the workloads they reach now...
	var moved []*model.Policy
	for _, k := range c.RemovedPolicies {
		if old := ix.policies[k]; old != nil {
			ix.reach(old, touch)
			glob = glob || old.Scope == model.ScopeGlobal
		}
	}
	for _, p := range c.Policies {
		old := ix.policies[p.Key()]
		if old != nil && sameLists(old, p) {
			continue
		}
		if old != nil {
			ix.reach(old, touch)
			glob = glob || old.Scope == model.ScopeGlobal
		}
		moved = append(moved, p)
	}
	// Workloads: the addresses they leave and take; identities counted.
	ids := map[uint64]bool{} // identity hash -> present before
	seen := func(w *model.Workload) {
		h := identityHash(w)
		if _, ok := ids[h]; !ok {
			ids[h] = ix.idRefs[h] > 0
		}
	}
	for _, k := range c.RemovedWorkloads {
		if old := ix.workloads[k]; old != nil {
			touch(k)
			seen(old)
			ix.removeWorkload(old)
		}
	}
	for _, w := range c.Workloads {
		if old := ix.workloads[w.Key()]; old != nil {
			touch(w.Key())
			seen(old)
			ix.removeWorkload(old)
		}
		seen(w)
		if _, err := ix.addWorkload(w); err != nil {
			return nil, err
		}
		touch(w.Key())
	}
	for _, k := range c.RemovedPolicies {
		if old := ix.policies[k]; old != nil {
			ix.removePolicy(old)
			delta.removed = append(delta.removed, k)
		}
	}
	for _, p := range c.Policies {
		ix.setPolicy(p)
		delta.policies[p.Key()] = p
	}
	// ...and the workloads they reach after.
	for _, p := range moved {
		ix.reach(p, touch)
		glob = glob || p.Scope == model.ScopeGlobal
	}
	for h, before := range ids {
		if before != (ix.idRefs[h] > 0) {
			maps.Copy(delta.policies, ix.policies)
			delta.idsHash = ix.hashIDs()
			break
		}
	}
	if glob {
		s := ix.specOf(ix.global)
		delta.glob = &s
	}
	for a := range touched {
		k := addrKey(a)
		if s, ok := ix.spec(a, d.identityNode); ok {
			delta.addrs[k] = s
		} else if _, ok := az.addrs[k]; ok {
			delta.gone = append(delta.gone, k)
		}
	}
	return delta, nil
}

// applyAuthzDelta writes delta in applyAuthz's order: policies, then the
// lists and the entries that name them, then what nothing refers to any
// more.
func (d *Dataplane) applyAuthzDelta(delta *authzDelta, compiled map[string]*compiledPolicy) error {
	az := d.az
	for _, key := range slices.Sorted(maps.Keys(delta.policies)) {
		if err := d.writePolicy(delta.policies[key], compiled[key]); err != nil {
			return err
		}
	}
	if delta.glob != nil {
		if err := d.writeGlob(*delta.glob); err != nil {
			return err
		}
	}
	for k, a := range delta.addrs {
		if err := d.writeAddr(k, a); err != nil {
			return err
		}
	}
	for _, k := range delta.gone {
		if err := d.deleteAddr(k); err != nil {
			return err
		}
	}
	if err := d.sweepLists(); err != nil {
		return err
	}
	for _, key := range delta.removed {
		if az.policies[key] != nil {
			if err := d.deletePolicy(key); err != nil {
				return err
			}
		}
	}
	az.idsHash = delta.idsHash
	return nil
}
