package dataplane

import (
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// authzIndex is the last applied mesh as the authorization maps see it,
// kept while the mesh has policies so that a change finds the entries it
// touches without the whole mesh (Update): which workloads a namespace or
// a policy's selector reaches, who holds each address, how many workloads
// share each identity. A full Apply rebuilds it from the mesh it wrote;
// Update changes it in place. The answers are translateAuthz's, which
// TestDataplane_DeltasEqualFullSync holds them to.
type authzIndex struct {
	workloads map[string]*model.Workload
	policies  map[string]*model.Policy
	byNS      map[string]map[string]struct{} // namespace -> workload keys
	selecting map[string]map[string]struct{} // policy key -> keys of the workloads that list it
	// owners are the workloads at each (unmapped) address, sorted by
	// key: the first keeps the address, as in authz.Index.
	owners   map[netip.Addr][]string
	ids      identities     // every workload's identity by hash, and 0: none
	idRefs   map[uint64]int // workloads per identity hash
	idsHash  uint64
	global   []string            // keys of the global policies, sorted
	nsPolicy map[string][]string // namespace -> keys of its namespace policies, sorted
}

func newAuthzIndex(workloads, policies int) *authzIndex {
	return &authzIndex{
		workloads: make(map[string]*model.Workload, workloads),
		policies:  make(map[string]*model.Policy, policies),
		byNS:      map[string]map[string]struct{}{},
		selecting: map[string]map[string]struct{}{},
		owners:    make(map[netip.Addr][]string, workloads),
		ids:       identities{0: nil},
		idRefs:    map[uint64]int{},
		nsPolicy:  map[string][]string{},
	}
}

// indexOf indexes the mesh translateAuthz translated into want.
func indexOf(want *desiredAuthz) *authzIndex {
	ix := newAuthzIndex(len(want.workloads), len(want.policies))
	for _, w := range want.workloads {
		ix.addWorkload(w) // identities were checked by translateAuthz
	}
	for _, p := range want.policies {
		ix.setPolicy(p)
	}
	ix.idsHash = want.idsHash
	return ix
}

// addWorkload indexes w; newID reports an identity no other workload had.
// Two identities with one hash are refused, as translateAuthz does.
func (ix *authzIndex) addWorkload(w *model.Workload) (newID bool, err error) {
	id := authz.IdentityOf(w)
	h := id.Hash()
	if prev := ix.ids[h]; prev != nil && *prev != id {
		return false, fmt.Errorf("workload %s: identity %s has the hash of %s; rename a service account", w.Key(), id, prev)
	}
	key := w.Key()
	ix.workloads[key] = w
	add(ix.byNS, w.Namespace, key)
	for _, p := range w.Policies {
		add(ix.selecting, p, key)
	}
	for _, a := range w.Addresses {
		a = a.Unmap()
		if os := ix.owners[a]; !slices.Contains(os, key) {
			i, _ := slices.BinarySearch(os, key)
			ix.owners[a] = slices.Insert(os, i, key)
		}
	}
	if ix.idRefs[h] == 0 {
		ix.ids[h] = &id
		newID = true
	}
	ix.idRefs[h]++
	return newID, nil
}

// removeWorkload forgets w (as indexed); goneID reports that no workload
// has its identity any more.
func (ix *authzIndex) removeWorkload(w *model.Workload) (goneID bool) {
	key := w.Key()
	delete(ix.workloads, key)
	remove(ix.byNS, w.Namespace, key)
	for _, p := range w.Policies {
		remove(ix.selecting, p, key)
	}
	for _, a := range w.Addresses {
		a = a.Unmap()
		os := slices.DeleteFunc(ix.owners[a], func(k string) bool { return k == key })
		if len(os) == 0 {
			delete(ix.owners, a)
		} else {
			ix.owners[a] = os
		}
	}
	h := identityHash(w)
	if ix.idRefs[h]--; ix.idRefs[h] <= 0 {
		delete(ix.idRefs, h)
		delete(ix.ids, h)
		return true
	}
	return false
}

func (ix *authzIndex) setPolicy(p *model.Policy) {
	if old := ix.policies[p.Key()]; old != nil {
		ix.removePolicy(old)
	}
	ix.policies[p.Key()] = p
	switch p.Scope {
	case model.ScopeGlobal:
		ix.global = insertSorted(ix.global, p.Key())
	case model.ScopeNamespace:
		ix.nsPolicy[p.Namespace] = insertSorted(ix.nsPolicy[p.Namespace], p.Key())
	}
}

func (ix *authzIndex) removePolicy(p *model.Policy) {
	key := p.Key()
	delete(ix.policies, key)
	drop := func(ks []string) []string { return slices.DeleteFunc(ks, func(k string) bool { return k == key }) }
	switch p.Scope {
	case model.ScopeGlobal:
		ix.global = drop(ix.global)
	case model.ScopeNamespace:
		if ks := drop(ix.nsPolicy[p.Namespace]); len(ks) > 0 {
			ix.nsPolicy[p.Namespace] = ks
		} else {
			delete(ix.nsPolicy, p.Namespace)
		}
	}
}

// reach calls f with each workload whose lists p is in: those that list
// it (whatever its scope, as authz.Index.Selected), and the workloads of
// its namespace for a namespace policy. A global policy is in the global
// list too.
func (ix *authzIndex) reach(p *model.Policy, f func(key string)) {
	for k := range ix.selecting[p.Key()] {
		f(k)
	}
	if p.Scope == model.ScopeNamespace {
		for k := range ix.byNS[p.Namespace] {
			f(k)
		}
	}
}

// sameLists reports whether a and b sit in the same lists: same scope,
// namespace and action (a change to their rules alone rewrites no list).
func sameLists(a, b *model.Policy) bool {
	return a.Scope == b.Scope && a.Namespace == b.Namespace && actionOf(a) == actionOf(b)
}

// spec is address a's entry: the workload holding it, its identity (on
// identityNode, when set) and lists. ok is false when no workload does.
func (ix *authzIndex) spec(a netip.Addr, identityNode string) (addrSpec, bool) {
	os := ix.owners[a]
	if len(os) == 0 {
		return addrSpec{}, false
	}
	w := ix.workloads[os[0]]
	var s addrSpec
	if identityNode == "" || w.Node == identityNode {
		s.identity = authz.IdentityOf(w).Hash()
	}
	s.lists[0] = ix.specOf(ix.nsPolicy[w.Namespace])
	keys := slices.Clone(w.Policies)
	slices.Sort(keys)
	s.lists[1] = ix.specOf(slices.Compact(keys))
	return s, true
}

// specOf is the list of the policies of keys (sorted) the mesh has.
func (ix *authzIndex) specOf(keys []string) listSpec {
	var s listSpec
	for _, k := range keys {
		if p := ix.policies[k]; p != nil {
			a := actionOf(p)
			s[a] = append(s[a], k)
		}
	}
	return s
}

// hashIDs is translateAuthz's idsHash of ix's identities.
func (ix *authzIndex) hashIDs() uint64 {
	f := fnv.New64a()
	for _, h := range slices.Sorted(maps.Keys(ix.ids)) {
		f.Write(strconv.AppendUint(nil, h, 16))
	}
	return f.Sum64()
}

func identityHash(w *model.Workload) uint64 { return authz.IdentityOf(w).Hash() }

func addrKey(a netip.Addr) bpf.KmeshAuthzAddrKey {
	return bpf.KmeshAuthzAddrKey{Addr: bpf.AddrWords(a)}
}

func add(m map[string]map[string]struct{}, k, v string) {
	s := m[k]
	if s == nil {
		s = map[string]struct{}{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func remove(m map[string]map[string]struct{}, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

func insertSorted(ks []string, k string) []string {
	i, found := slices.BinarySearch(ks, k)
	if found {
		return ks
	}
	return slices.Insert(ks, i, k)
}
