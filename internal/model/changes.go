package model

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/internal/keyset"
)

// Changes is what a source changed since the state it last handed over:
// services, workloads and policies added or changed (whole, by pointer;
// the source must not modify them afterwards) and the keys of those
// removed. A key appears at most once per kind. Sources that hold only
// whole meshes (a file) make it with Diff; the xDS workload client builds
// it from the resources of each response. Changes are checked (State.Check)
// and applied (State.Apply) as one: all of them or none.
type Changes struct {
	Services         []*Service
	RemovedServices  []string
	Workloads        []*Workload
	RemovedWorkloads []string
	Policies         []*Policy
	RemovedPolicies  []string
}

// Empty reports whether c changes nothing.
func (c *Changes) Empty() bool {
	return c == nil || len(c.Services)+len(c.RemovedServices)+len(c.Workloads)+len(c.RemovedWorkloads)+len(c.Policies)+len(c.RemovedPolicies) == 0
}

// Len is the number of items c adds, changes or removes.
func (c *Changes) Len() int {
	if c == nil {
		return 0
	}
	return len(c.Services) + len(c.RemovedServices) + len(c.Workloads) + len(c.RemovedWorkloads) + len(c.Policies) + len(c.RemovedPolicies)
}

// String summarises c for logs.
func (c *Changes) String() string {
	return fmt.Sprintf("services +%d -%d, workloads +%d -%d, policies +%d -%d",
		len(c.Services), len(c.RemovedServices), len(c.Workloads), len(c.RemovedWorkloads), len(c.Policies), len(c.RemovedPolicies))
}

// Diff returns the changes that turn old (nil: empty) into new. Items are
// compared by value; the changed ones point into new.
func Diff(old, new *Mesh) *Changes {
	if old == nil {
		old = &Mesh{}
	}
	c := &Changes{}
	c.Services, c.RemovedServices = diffItems(old.Services, new.Services, (*Service).Key)
	c.Workloads, c.RemovedWorkloads = diffItems(old.Workloads, new.Workloads, (*Workload).Key)
	c.Policies, c.RemovedPolicies = diffItems(old.Policies, new.Policies, (*Policy).Key)
	return c
}

func diffItems[T any](old, new []T, key func(*T) string) (set []*T, removed []string) {
	before := make(map[string]*T, len(old))
	for i := range old {
		before[key(&old[i])] = &old[i]
	}
	for i := range new {
		k := key(&new[i])
		if o, ok := before[k]; !ok || !reflect.DeepEqual(o, &new[i]) {
			set = append(set, &new[i])
		}
		delete(before, k)
	}
	removed = slices.Sorted(maps.Keys(before))
	return set, removed
}

// State is a mesh kept by key, with the indexes a change needs: which
// services a workload serves, who owns a service address, whose address
// an IP is. It is what the daemon holds between changes; readers (admin,
// telemetry) may call its lookups from other goroutines.
type State struct {
	mu        sync.RWMutex
	services  map[string]*Service
	workloads map[string]*Workload
	policies  map[string]*Policy
	// users[workload] are the keys of the services the workload is an
	// endpoint of: nearly every workload serves one (a map per workload
	// cost ~350 bytes, 35 MB at 100,000 workloads; a slice per workload
	// 3 MB more than keyset's one string).
	users     keyset.Map[string]
	frontends map[netip.AddrPort]string // service address:port -> service key
	addrs     map[netip.Addr]string     // workload address -> workload key
	// l7 holds the L7 objects of the last whole mesh (Gateways, Routes,
	// VirtualServices, WaypointPolicies) and its UnenforcedPolicies: read by kmesh-waypoint and the
	// dump, not by the dataplane, and not part of Changes.
	l7 Mesh
}

// SetL7 keeps m's L7 objects (see State.l7).
func (s *State) SetL7(m *Mesh) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.l7 = Mesh{Gateways: m.Gateways, Routes: m.Routes, VirtualServices: m.VirtualServices, WaypointPolicies: m.WaypointPolicies,
		UnenforcedPolicies: m.UnenforcedPolicies}
}

// UnenforcedPolicies returns the policies of the last whole mesh that are
// accepted but not enforced, without a snapshot of the mesh.
func (s *State) UnenforcedPolicies() []UnenforcedPolicy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.l7.UnenforcedPolicies
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		services: map[string]*Service{}, workloads: map[string]*Workload{}, policies: map[string]*Policy{},
		users: keyset.New[string](), frontends: map[netip.AddrPort]string{}, addrs: map[netip.Addr]string{},
	}
}

// Service returns the service of key, or nil.
func (s *State) Service(key string) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[key]
}

// Workload returns the workload of key, or nil.
func (s *State) Workload(key string) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[key]
}

// WorkloadAt returns the workload with address a, or nil.
func (s *State) WorkloadAt(a netip.Addr) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[s.addrs[a]]
}

// ServiceAt returns the service with address and port ap, or nil.
func (s *State) ServiceAt(ap netip.AddrPort) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[s.frontends[ap]]
}

// ServicesOf returns the services workload key is an endpoint of, sorted.
func (s *State) ServicesOf(key string) []*Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	keys := s.users.Names(key)
	slices.Sort(keys)
	out := make([]*Service, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.services[k])
	}
	return out
}

// Counts returns how many services, workloads and policies s holds.
func (s *State) Counts() (services, workloads, policies int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.services), len(s.workloads), len(s.policies)
}

// HasPolicies reports whether s holds any policy.
func (s *State) HasPolicies() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.policies) > 0
}

// PolicyActions counts s's policies by action.
func (s *State) PolicyActions() map[PolicyAction]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[PolicyAction]int{}
	for _, p := range s.policies {
		out[p.Action]++
	}
	return out
}

// Mesh returns a snapshot of s, sorted by key: for the admin API and for
// whole-mesh consumers. It copies the slices, not the items.
func (s *State) Mesh() *Mesh {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := &Mesh{
		Services:  make([]Service, 0, len(s.services)),
		Workloads: make([]Workload, 0, len(s.workloads)),
		Gateways:  s.l7.Gateways, Routes: s.l7.Routes, VirtualServices: s.l7.VirtualServices, WaypointPolicies: s.l7.WaypointPolicies,
		UnenforcedPolicies: s.l7.UnenforcedPolicies,
	}
	for _, k := range slices.Sorted(maps.Keys(s.services)) {
		m.Services = append(m.Services, *s.services[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.workloads)) {
		m.Workloads = append(m.Workloads, *s.workloads[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.policies)) {
		m.Policies = append(m.Policies, *s.policies[k])
	}
	return m
}

// DiffMesh returns the changes that turn s into m, comparing by key and
// value: for sources that hand over whole meshes (a file, a resync).
func (s *State) DiffMesh(m *Mesh) *Changes {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := &Changes{}
	c.Services, c.RemovedServices = diffState(s.services, m.Services, (*Service).Key)
	c.Workloads, c.RemovedWorkloads = diffState(s.workloads, m.Workloads, (*Workload).Key)
	c.Policies, c.RemovedPolicies = diffState(s.policies, m.Policies, (*Policy).Key)
	return c
}

func diffState[T any](cur map[string]*T, new []T, key func(*T) string) (set []*T, removed []string) {
	if len(cur) == 0 {
		// A first sync: everything is new, and there is nothing to
		// remove (no key per item, no set of 100,000 keys).
		set = make([]*T, len(new))
		for i := range new {
			set[i] = &new[i]
		}
		return set, nil
	}
	seen := make(map[string]bool, len(new))
	for i := range new {
		k := key(&new[i])
		seen[k] = true
		if o, ok := cur[k]; !ok || !reflect.DeepEqual(o, &new[i]) {
			set = append(set, &new[i])
		}
	}
	for k := range cur {
		if !seen[k] {
			removed = append(removed, k)
		}
	}
	slices.Sort(removed)
	return set, removed
}

// Check reports whether c applies to s: each changed item is valid alone
// (the rules of Mesh.Validate), and the references and unique addresses
// hold where c touches them. It costs O(size of c and the services it
// touches), not O(mesh). The error names the item at fault.
func (s *State) Check(c *Changes) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	gone := func(keys []string) map[string]bool {
		m := make(map[string]bool, len(keys))
		for _, k := range keys {
			m[k] = true
		}
		return m
	}
	goneS, goneW, goneP := gone(c.RemovedServices), gone(c.RemovedWorkloads), gone(c.RemovedPolicies)
	newW := make(map[string]*Workload, len(c.Workloads))
	for _, w := range c.Workloads {
		if newW[w.Key()] != nil || goneW[w.Key()] {
			return fmt.Errorf("workload %s: changed twice in one update", w.Key())
		}
		newW[w.Key()] = w
	}
	newP := make(map[string]*Policy, len(c.Policies))
	for _, p := range c.Policies {
		if newP[p.Key()] != nil || goneP[p.Key()] {
			return fmt.Errorf("policy %s: changed twice in one update", p.Key())
		}
		newP[p.Key()] = p
		if err := (&Mesh{Policies: []Policy{*p}}).Validate(); err != nil {
			return err
		}
	}
	policy := func(k string) bool {
		return newP[k] != nil || (!goneP[k] && s.policies[k] != nil)
	}
	workload := func(k string) *Workload {
		if w := newW[k]; w != nil {
			return w
		}
		if goneW[k] {
			return nil
		}
		return s.workloads[k]
	}
	for _, w := range c.Workloads {
		alone := *w
		alone.Policies = nil // checked below, against the state
		if err := (&Mesh{Workloads: []Workload{alone}}).Validate(); err != nil {
			return err
		}
		for _, k := range w.Policies {
			if !policy(k) {
				return fmt.Errorf("workload %s: policy %s does not exist", w.Key(), k)
			}
		}
	}
	if len(goneP) > 0 {
		// Removing a policy: no remaining workload may name it. This
		// walks the workloads, which only policy removals pay.
		for k, w := range s.workloads {
			if goneW[k] || newW[k] != nil {
				continue
			}
			for _, p := range w.Policies {
				if goneP[p] {
					return fmt.Errorf("workload %s: policy %s does not exist", k, p)
				}
			}
		}
	}
	newS := make(map[string]*Service, len(c.Services))
	for _, sv := range c.Services {
		if newS[sv.Key()] != nil || goneS[sv.Key()] {
			return fmt.Errorf("service %s: changed twice in one update", sv.Key())
		}
		newS[sv.Key()] = sv
	}
	claimed := map[netip.AddrPort]string{}
	for _, sv := range c.Services {
		one := &Mesh{Services: []Service{*sv}, Gateways: s.l7.Gateways}
		for _, e := range sv.Endpoints {
			w := workload(e.Workload)
			if w == nil {
				return fmt.Errorf("service %s: endpoint workload %s does not exist", sv.Key(), e.Workload)
			}
			one.Workloads = append(one.Workloads, *w)
			one.Workloads[len(one.Workloads)-1].Policies = nil
		}
		if err := one.Validate(); err != nil {
			return err
		}
		for _, a := range sv.Addresses {
			for _, p := range sv.Ports {
				ap := netip.AddrPortFrom(a, p.Port)
				owner := s.frontends[ap]
				if owner != "" && owner != sv.Key() && !goneS[owner] && (newS[owner] == nil || claims(newS[owner], ap)) {
					return fmt.Errorf("service %s: address %s is already used by service %s", sv.Key(), ap, owner)
				}
				if prev := claimed[ap]; prev != "" {
					return fmt.Errorf("service %s: address %s is already used by service %s", sv.Key(), ap, prev)
				}
				claimed[ap] = sv.Key()
			}
		}
	}
	// A removed workload must not stay an endpoint of a service.
	for k := range goneW {
		for _, sk := range s.users.Names(k) {
			if goneS[sk] {
				continue
			}
			if ns := newS[sk]; ns != nil && !hasEndpoint(ns, k) {
				continue
			}
			return fmt.Errorf("service %s: endpoint workload %s does not exist", sk, k)
		}
	}
	return nil
}

func claims(s *Service, ap netip.AddrPort) bool {
	for _, a := range s.Addresses {
		for _, p := range s.Ports {
			if netip.AddrPortFrom(a, p.Port) == ap {
				return true
			}
		}
	}
	return false
}

func hasEndpoint(s *Service, workload string) bool {
	for _, e := range s.Endpoints {
		if e.Workload == workload {
			return true
		}
	}
	return false
}

// Apply makes s hold c (checked by Check first) and returns the changes
// that undo it.
func (s *State) Apply(c *Changes) *Changes {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Into an empty s (a first sync) no workload replaces another: each
	// key comes once (Check), so none is looked up first. At 500,000
	// workloads that saves ~0.1 s of the state's ~1 s (the insert then
	// pays the cache miss the lookup paid), which the first sync builds
	// beside the dataplane's translation and writes.
	fresh := len(s.workloads) == 0
	s.presize(c)
	undo := &Changes{}
	// Removals first, so an item that moves (an address from one service
	// to another) is free for its new owner.
	for _, k := range c.RemovedServices {
		if old := s.services[k]; old != nil {
			undo.Services = append(undo.Services, old)
			s.unindexService(old)
			delete(s.services, k)
		}
	}
	for _, sv := range c.Services {
		if old := s.services[sv.Key()]; old != nil {
			undo.Services = append(undo.Services, old)
			s.unindexService(old)
		} else {
			undo.RemovedServices = append(undo.RemovedServices, sv.Key())
		}
	}
	for _, k := range c.RemovedWorkloads {
		if old := s.workloads[k]; old != nil {
			undo.Workloads = append(undo.Workloads, old)
			s.unindexWorkload(old)
			delete(s.workloads, k)
		}
	}
	for _, w := range c.Workloads {
		// One key string per workload, shared by the map and the
		// address index (Key allocates).
		k := w.Key()
		var old *Workload
		if !fresh {
			old = s.workloads[k]
		}
		if old != nil {
			undo.Workloads = append(undo.Workloads, old)
			s.unindexWorkload(old)
		} else {
			undo.RemovedWorkloads = append(undo.RemovedWorkloads, k)
		}
		s.workloads[k] = w
		for _, a := range w.Addresses {
			s.addrs[a] = k
		}
	}
	for _, sv := range c.Services {
		k := sv.Key()
		s.services[k] = sv
		s.indexService(sv, k)
	}
	for _, k := range c.RemovedPolicies {
		if old := s.policies[k]; old != nil {
			undo.Policies = append(undo.Policies, old)
			delete(s.policies, k)
		}
	}
	for _, p := range c.Policies {
		if old := s.policies[p.Key()]; old != nil {
			undo.Policies = append(undo.Policies, old)
		} else {
			undo.RemovedPolicies = append(undo.RemovedPolicies, p.Key())
		}
		s.policies[p.Key()] = p
	}
	return undo
}

// presize makes the maps of an empty s as large as c fills them: a first
// sync fills them from empty, and growing them through every doubling
// (100,000 workloads and addresses, as many frontends and users as
// services and endpoints) rehashed each several times (~0.4 s of CPU at
// 100,000 endpoints).
func (s *State) presize(c *Changes) {
	if len(s.workloads) > 0 || len(s.services) > 0 || len(c.Workloads)+len(c.Services) < 1024 {
		return
	}
	var addrs, frontends, endpoints int
	for _, w := range c.Workloads {
		addrs += len(w.Addresses)
	}
	for _, sv := range c.Services {
		frontends += len(sv.Addresses) * len(sv.Ports)
		endpoints += len(sv.Endpoints)
	}
	s.workloads = make(map[string]*Workload, len(c.Workloads))
	s.addrs = make(map[netip.Addr]string, addrs)
	s.services = make(map[string]*Service, len(c.Services))
	s.frontends = make(map[netip.AddrPort]string, frontends)
	s.users = keyset.WithCapacity[string](min(endpoints, len(c.Workloads)))
}

// indexService indexes sv under its key k (one string for every entry).
func (s *State) indexService(sv *Service, k string) {
	for _, e := range sv.Endpoints {
		s.users.Mark(e.Workload, k, true)
	}
	for _, a := range sv.Addresses {
		for _, p := range sv.Ports {
			s.frontends[netip.AddrPortFrom(a, p.Port)] = k
		}
	}
}

func (s *State) unindexService(sv *Service) {
	k := sv.Key()
	for _, e := range sv.Endpoints {
		s.users.Mark(e.Workload, k, false)
	}
	for _, a := range sv.Addresses {
		for _, p := range sv.Ports {
			if ap := netip.AddrPortFrom(a, p.Port); s.frontends[ap] == k {
				delete(s.frontends, ap)
			}
		}
	}
}

func (s *State) unindexWorkload(w *Workload) {
	for _, a := range w.Addresses {
		if s.addrs[a] == w.Key() {
			delete(s.addrs, a)
		}
	}
}

// Users returns the keys of the services workload key is an endpoint of
// (unsorted); for the dataplane, under its own lock.
func (s *State) Users(key string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.users.Names(key)
}
