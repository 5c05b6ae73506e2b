package xds

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kmesh-go/kmesh/internal/model"
)

// buildWorkloadMesh joins the workload API's resources into a mesh:
// workloads become endpoints of the services their memberships name, in
// whatever order they arrived. A resource that claims what an older one
// holds (a workload or service name, a service address and port, a policy
// name) is left out and reported.
func buildWorkloadMesh(st *store) *built { return buildMesh(st, false) }

// buildWaypointView is the mesh as a waypoint needs it: every service
// balances over its own endpoints, whatever waypoint istiod gave it (the
// waypoint is that waypoint, and must reach the endpoints behind it), and
// no workload gets the deny policy of an unserved workload waypoint.
func buildWaypointView(st *store) *built { return buildMesh(st, true) }

// buildMesh is the full build; ownEndpoints is the waypoint's view.
func buildMesh(st *store, ownEndpoints bool) *built {
	b := &built{mesh: &model.Mesh{}}
	m := b.mesh

	policies := map[string]bool{}
	for _, e := range st.sorted(AuthorizationType) {
		p := *e.value.(*model.Policy)
		if policies[p.Key()] {
			b.conflict(AuthorizationType, e.name, "policy %s is already defined by another resource", p.Key())
			continue
		}
		policies[p.Key()] = true
		m.Policies = append(m.Policies, p)
	}

	// One pass over the addresses in arrival order, split by kind; the
	// slices are sized up front, since at 100,000 workloads growing them
	// by appends copies the mesh several times over.
	addrs := st.sorted(AddressType)
	var nw int
	for _, e := range addrs {
		if _, ok := e.value.(*workload); ok {
			nw++
		}
	}
	order := make([]arrival, 0, nw)
	for i, e := range addrs {
		if w, ok := e.value.(*workload); ok {
			order = append(order, newArrival(w, i))
		}
	}
	m.Services = make([]model.Service, 0, len(addrs)-nw)

	// Workloads: one per key, the oldest resource wins; members[host] are
	// the endpoints of a service, in arrival order. The data plane waits
	// for the build (a first state of 500,000 workloads: seconds of CPU),
	// so it runs on two goroutines: the workloads are sorted by key while
	// the members are collected; then both copy them into the mesh and
	// resolve the services. The mesh's workloads are in key order, as
	// Sort leaves them, and built[i] is m.Workloads[i] (rebind).
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		slices.SortFunc(order, func(a, b arrival) int {
			return a.compare(b)
		})
	}()
	members := make(map[string][]member, len(addrs)-nw)
	for _, e := range addrs {
		if w, ok := e.value.(*workload); ok {
			for _, ms := range w.services {
				members[ms.host] = append(members[ms.host], member{w, ms.ports})
			}
		}
	}
	wg.Wait()
	built := make([]*workload, 0, nw)
	for i, o := range order {
		if i > 0 && order[i-1].key == o.key {
			b.conflict(AddressType, addrs[o.at].name, "workload %s is already defined by another resource", o.w.key)
			for _, ms := range o.w.services {
				members[ms.host] = slices.DeleteFunc(members[ms.host], func(mb member) bool { return mb.w == o.w })
			}
			continue
		}
		built = append(built, o.w)
	}
	b.workloads = workloadClaims{order: order, addrs: addrs, members: members}

	var unserved []unservedAt // workloads with a waypoint of their own
	for i, w := range built {
		if w.waypoint != nil && !ownEndpoints {
			unserved = append(unserved, unservedAt{i, w.waypoint})
		}
	}
	m.Workloads = make([]model.Workload, len(built))
	present := func(p string) bool { return policies[p] }
	copyWorkloads := func(from, to int) {
		for i := from; i < to; i++ {
			m.Workloads[i] = *modelWorkload(built[i], present)
		}
	}

	// Waypoints are resolved only when some service or workload has one:
	// at scale the address index costs more than the rest of the build.
	var wp *waypoints
	if len(unserved) > 0 {
		wp = newWaypoints(members)
	}
	for _, e := range addrs {
		if wp != nil {
			break
		}
		if s, ok := e.value.(*service); ok && s.waypoint != nil && !ownEndpoints {
			wp = newWaypoints(members)
		}
	}
	// The copy and each service's endpoints are made on both goroutines;
	// which services clash is decided after, in arrival order
	// (buildServices).
	var svcs []*service
	for _, e := range addrs {
		if s, ok := e.value.(*service); ok && s.skip == "" && (s.waypoint == nil || ownEndpoints) {
			svcs = append(svcs, s)
		}
	}
	made := make([]madeService, len(svcs))
	resolve := func(from, to int) {
		for i := from; i < to; i++ {
			made[i].ms, made[i].ok = buildService(svcs[i], members[svcs[i].host], &made[i].notes)
		}
	}
	if wp != nil {
		copyWorkloads(0, len(built))
		for _, e := range addrs {
			switch v := e.value.(type) {
			case *service:
				if v.skip == "" {
					wp.addService(v)
				}
			case *workload:
				wp.addWorkload(v)
			}
		}
		resolve(0, len(svcs))
	} else {
		// Both goroutines take chunks of the copy, then of the services,
		// until none is left: a fixed split of the two left one goroutine
		// waiting for the other (at 500,000 workloads the copy, mostly
		// page faults of the new array and cache misses, takes longer
		// than the services' endpoints, and how much longer depends on
		// the machine).
		const wlChunk, svcChunk = 4096, 512
		nwc := (len(built) + wlChunk - 1) / wlChunk
		nsc := (len(svcs) + svcChunk - 1) / svcChunk
		var next atomic.Int64
		work := func() {
			for {
				switch t := int(next.Add(1) - 1); {
				case t < nwc:
					copyWorkloads(t*wlChunk, min((t+1)*wlChunk, len(built)))
				case t < nwc+nsc:
					t -= nwc
					resolve(t*svcChunk, min((t+1)*svcChunk, len(svcs)))
				default:
					return
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
		work()
		wg.Wait()
	}
	for _, u := range unserved {
		wp.refuse(&m.Workloads[u.i], u.ref, policies, b)
	}
	buildServices(b, addrs, made, wp, ownEndpoints)
	for _, u := range unserved {
		if ms, ok := wp.workloadService(&m.Workloads[u.i], u.ref); ok {
			m.Services = append(m.Services, ms)
		}
	}
	if wp != nil {
		wp.markInstances(m, built)
	}
	// The workloads are in key order already (Sort would move 500,000 of
	// them only to find so): the services alone are sorted.
	(&model.Mesh{Services: m.Services}).Sort()
	rebind(m, built)
	return b
}

// workloadClaims is what the full build found of the workloads, which the
// change index (newWorkloadIndex) takes over instead of finding it again.
type workloadClaims struct {
	// order is every workload by key, then arrival: the first of each key
	// is the mesh's (m.Workloads, in this order), the others were left out.
	order []arrival
	addrs []named // the Address resources in arrival order (arrival.at)
	// members are the workloads of each host in the mesh, in arrival
	// order, with their port mappings.
	members map[string][]member
}

// arrival is a workload and its place in the arrival order, sorted by
// key and then arrival. The first 16 bytes of the key are held as two
// numbers, in the order the bytes compare: most comparisons end there,
// without reading the key's bytes from wherever they are on the heap
// (sorting 500,000 workloads took 0.57 s of CPU, 0.30 s with them).
type arrival struct {
	p0, p1 uint64
	key    string
	w      *workload
	at     int
}

func newArrival(w *workload, at int) arrival {
	var b [16]byte
	copy(b[:], w.key)
	return arrival{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), w.key, w, at}
}

// compare orders by key, then arrival. Equal prefixes leave it to the
// whole keys: a key shorter than 16 bytes is padded with zeros, which
// compare as equal to a key's own zero bytes.
func (a arrival) compare(b arrival) int {
	if a.p0 != b.p0 {
		return cmp.Compare(a.p0, b.p0)
	}
	if a.p1 != b.p1 {
		return cmp.Compare(a.p1, b.p1)
	}
	return cmp.Or(strings.Compare(a.key, b.key), cmp.Compare(a.at, b.at))
}

// madeService is what buildService made of one service.
type madeService struct {
	ms    model.Service
	ok    bool
	notes []string
}

// buildServices adds the services of addrs to b's mesh, the older of two
// that clash winning: made holds, in arrival order, what buildService
// made of each service without a waypoint (wp redirects the others).
// Only the notes of services that get that far are kept, as a build that
// called buildService for those alone.
func buildServices(b *built, addrs []named, made []madeService, wp *waypoints, ownEndpoints bool) {
	m := b.mesh
	services := make(map[string]bool, cap(m.Services))
	frontends := make(map[netip.AddrPort]string, cap(m.Services))
	for _, e := range addrs {
		s, ok := e.value.(*service)
		if !ok || s.skip != "" {
			continue
		}
		redirected := s.waypoint != nil && !ownEndpoints
		var mk madeService
		if !redirected {
			mk, made = made[0], made[1:]
		}
		if services[s.s.Key()] {
			b.conflict(AddressType, e.name, "service %s is already defined by another resource", s.s.Key())
			continue
		}
		if clash := firstClash(s.s.Addresses, s.targets, frontends); clash.IsValid() {
			b.conflict(AddressType, e.name, "address %s is already used by service %s", clash, frontends[clash])
			continue
		}
		ms := mk.ms
		if redirected {
			ms = s.s
			wp.redirect(s, &ms, &b.notes)
		} else {
			b.notes = append(b.notes, mk.notes...)
			if !mk.ok {
				continue
			}
		}
		services[ms.Key()] = true
		for _, a := range ms.Addresses {
			for p := range s.targets {
				frontends[netip.AddrPortFrom(a, p)] = ms.Key()
			}
		}
		m.Services = append(m.Services, ms)
	}
}

// rebind points each converted workload at its copy in the mesh, where
// the two are equal (no policy left out, no waypoint's deny policy
// added, not marked as a waypoint's instance), so the store's copy is garbage and every workload is held once:
// the mesh's, which the model's State and the index point into. built[i]
// is m.Workloads[i]'s, which the check of the name confirms.
func rebind(m *model.Mesh, built []*workload) {
	for i, w := range built {
		mw := &m.Workloads[i]
		if w.waypoint == nil && mw.WaypointInstanceOf == "" && len(mw.Policies) == len(w.w.Policies) && mw.Name == w.w.Name && mw.Namespace == w.w.Namespace {
			w.w = mw
		}
	}
}

// member is a workload that names a service, with its own port mapping.
type member struct {
	w     *workload
	ports portMap
}

// modelWorkload is w as the model has it: policies that have not arrived
// yet are left out until they do. With every policy present it is w's own
// copy (never modified in place), not a new one.
func modelWorkload(w *workload, present func(string) bool) *model.Workload {
	if !slices.ContainsFunc(w.w.Policies, func(p string) bool { return !present(p) }) {
		return w.w
	}
	mw := *w.w
	mw.Policies = slices.DeleteFunc(slices.Clone(mw.Policies), func(p string) bool { return !present(p) })
	return &mw
}

// buildService is one service with its endpoints: the members that take
// traffic, each agreeing with the service on every target port (the data
// plane keeps one target port per service port). ok is false when no
// port has a known target: the service is left out until an endpoint
// names one. The full build and the incremental one (workload_delta.go)
// both use it.
func buildService(s *service, members []member, notes *[]string) (model.Service, bool) {
	// Sized once: grown by appends, the candidates and endpoints of
	// 50,000 services of 10 endpoints were ~0.26 s of a first build's CPU
	// (growslice, pprof of kmeshd's first sync at 500,000 workloads).
	cands := make([]candidate, 0, len(members))
	for _, mb := range members {
		if !mb.w.endpoint || (!mb.w.healthy && !s.allowUnhealthy) {
			continue
		}
		cands = append(cands, candidate{key: mb.w.key, ports: mb.ports})
	}
	ms := s.s
	ms.Ports, ms.Endpoints = resolvePorts(s, cands, notes)
	if len(ms.Ports) == 0 {
		*notes = append(*notes, fmt.Sprintf("service %s: no target port known for any port; left out until an endpoint names one", s.host))
		return ms, false
	}
	if s.note != "" {
		*notes = append(*notes, s.note)
	}
	return ms, true
}

// firstClash returns the first address and port of the service that
// another service already uses.
func firstClash(addrs []netip.Addr, ports map[uint16]uint16, used map[netip.AddrPort]string) netip.AddrPort {
	for _, a := range addrs {
		for _, p := range slices.Sorted(maps.Keys(ports)) {
			if ap := netip.AddrPortFrom(a, p); used[ap] != "" {
				return ap
			}
		}
	}
	return netip.AddrPort{}
}

type candidate struct {
	key   string
	ports portMap // the workload's own service port -> target port
}

// resolvePorts picks each service port's target port and the endpoints
// that serve it. A workload's own mapping overrides the service's; where
// the service leaves the target to the workloads (0), the most common
// answer wins (ties: the lower port). Endpoints that disagree on any port
// are left out with a note: the data plane has one target port per
// service port. Ports nobody gives a target for are dropped.
func resolvePorts(s *service, cands []candidate, notes *[]string) ([]model.ServicePort, []model.Endpoint) {
	target := func(c candidate, sp uint16) uint16 {
		if t := c.ports.target(sp); t != 0 {
			return t
		}
		return s.targets[sp]
	}
	var ports []model.ServicePort
	for _, p := range s.s.Ports {
		t := s.targets[p.Port]
		if t == 0 {
			votes := map[uint16]int{}
			for _, c := range cands {
				if v := target(c, p.Port); v != 0 {
					votes[v]++
				}
			}
			for v, n := range votes {
				if n > votes[t] || (n == votes[t] && v < t) {
					t = v
				}
			}
		}
		if t == 0 {
			continue
		}
		p.TargetPort = t
		ports = append(ports, p)
	}
	eps := make([]model.Endpoint, 0, len(cands))
	for _, c := range cands {
		ok := true
		for _, p := range ports {
			if target(c, p.Port) != p.TargetPort {
				*notes = append(*notes, fmt.Sprintf("service %s: endpoint %s maps port %d to %d, not %d; left out", s.host, c.key, p.Port, target(c, p.Port), p.TargetPort))
				ok = false
				break
			}
		}
		if ok {
			eps = append(eps, model.Endpoint{Workload: c.key})
		}
	}
	if len(eps) == 0 {
		eps = nil // as before the sizing: reflect.DeepEqual tells nil from empty
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int { return cmp.Compare(a.Workload, b.Workload) })
	slices.SortFunc(ports, func(a, b model.ServicePort) int { return cmp.Compare(a.Port, b.Port) })
	return ports, eps
}
