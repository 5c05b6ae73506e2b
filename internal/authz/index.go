package authz

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Index answers, for one mesh, which policies apply to a workload and which
// workload is at an address. The dataplane builds its maps from the same
// answers, so the kernel and Go agree on both.
type Index struct {
	policies  map[string]*model.Policy
	global    []*model.Policy
	namespace map[string][]*model.Policy
	byAddr    map[netip.Addr]*model.Workload
}

// NewIndex indexes m. m must not change while the index is in use.
func NewIndex(m *model.Mesh) *Index {
	ix := &Index{
		policies:  make(map[string]*model.Policy, len(m.Policies)),
		namespace: map[string][]*model.Policy{},
		byAddr:    map[netip.Addr]*model.Workload{},
	}
	for i := range m.Policies {
		p := &m.Policies[i]
		ix.policies[p.Key()] = p
		switch p.Scope {
		case model.ScopeGlobal:
			ix.global = append(ix.global, p)
		case model.ScopeNamespace:
			ix.namespace[p.Namespace] = append(ix.namespace[p.Namespace], p)
		}
	}
	byKey := func(a, b *model.Policy) int { return strings.Compare(a.Key(), b.Key()) }
	slices.SortFunc(ix.global, byKey)
	for _, ps := range ix.namespace {
		slices.SortFunc(ps, byKey)
	}
	workloads := make([]*model.Workload, len(m.Workloads))
	for i := range m.Workloads {
		workloads[i] = &m.Workloads[i]
	}
	slices.SortFunc(workloads, func(a, b *model.Workload) int { return strings.Compare(a.Key(), b.Key()) })
	for _, w := range workloads {
		for _, a := range w.Addresses {
			// Two workloads at one address: the first by key keeps it.
			if _, dup := ix.byAddr[a.Unmap()]; !dup {
				ix.byAddr[a.Unmap()] = w
			}
		}
	}
	return ix
}

// Policies reports whether the mesh has any policy.
func (ix *Index) Policies() bool { return len(ix.policies) > 0 }

// Global returns the global policies, by key.
func (ix *Index) Global() []*model.Policy { return ix.global }

// Namespace returns the namespace policies of ns, by key.
func (ix *Index) Namespace(ns string) []*model.Policy { return ix.namespace[ns] }

// Selected returns the policies w lists (workload-selector scope), by key,
// each once; keys of policies the mesh lacks are left out, as ztunnel does.
func (ix *Index) Selected(w *model.Workload) []*model.Policy {
	keys := slices.Clone(w.Policies)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	out := make([]*model.Policy, 0, len(keys))
	for _, k := range keys {
		if p := ix.policies[k]; p != nil {
			out = append(out, p)
		}
	}
	return out
}

// Applicable returns the policies that apply to w in evaluation order:
// global, then namespace, then workload-selector ones.
func (ix *Index) Applicable(w *model.Workload) []*model.Policy {
	return slices.Concat(ix.Global(), ix.Namespace(w.Namespace), ix.Selected(w))
}

// WorkloadAt returns the workload at address a (unmapped first), or nil.
// When two workloads share an address, the first by key is the one.
func (ix *Index) WorkloadAt(a netip.Addr) *model.Workload { return ix.byAddr[a.Unmap()] }

// Addresses returns every workload address with the workload at it.
func (ix *Index) Addresses() map[netip.Addr]*model.Workload { return ix.byAddr }

// AtDestination decides a connection as the destination's node does: the
// source is known only by its address. ok is false when dst is no
// workload's address, and the connection is not the mesh's to judge.
func (ix *Index) AtDestination(src netip.Addr, dst netip.AddrPort) (d Decision, ok bool) {
	dw := ix.WorkloadAt(dst.Addr())
	if dw == nil {
		return Decision{}, false
	}
	conn := Conn{Src: src.Unmap(), Dst: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())}
	if sw := ix.WorkloadAt(src); sw != nil {
		id := IdentityOf(sw)
		conn.Identity = &id
	}
	return Evaluate(ix.Applicable(dw), conn), true
}

// FromWorkload decides a connection from workload src, sent from its
// address srcAddr, as the source's node does at connect time.
func (ix *Index) FromWorkload(src *model.Workload, srcAddr netip.Addr, dst netip.AddrPort) (d Decision, ok bool) {
	dw := ix.WorkloadAt(dst.Addr())
	if dw == nil {
		return Decision{}, false
	}
	id := IdentityOf(src)
	conn := Conn{Src: srcAddr.Unmap(), Dst: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), Identity: &id}
	return Evaluate(ix.Applicable(dw), conn), true
}
