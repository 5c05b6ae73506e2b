package dataplane

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// desired is a mesh translated into map terms, before ids are given out.
type desired struct {
	backends  map[string]bpf.KmeshBackendValue // by workload key
	services  map[string]*desiredService       // by service key
	frontends map[bpf.KmeshFrontendKey]desiredFrontend
	workloads map[string]*model.Workload // by key: localities for the priorities
	// order is backends in name order, when the mesh's workloads came
	// in it (nil otherwise: applyBackends sorts them).
	order []namedBackend
}

type namedBackend struct {
	key   string
	value bpf.KmeshBackendValue
}

type desiredService struct {
	lbMode uint8
	lb     *lbSpec // locality, affinity, outlier detection (lb.go)
	// endpoints per family: the workloads that have an address of it.
	endpoints [2][]weightedWorkload
	frontends []bpf.KmeshFrontendKey
}

type weightedWorkload struct {
	workload string
	weight   uint32
}

type desiredFrontend struct {
	service    string
	targetPort uint16 // network byte order
}

var lbModes = map[model.LBMode]uint8{
	model.LBRandom:     uint8(bpf.KmeshKmLbModeKM_LB_RANDOM),
	model.LBRoundRobin: uint8(bpf.KmeshKmLbModeKM_LB_ROUND_ROBIN),
	model.LBMaglev:     uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV),
}

func translate(m *model.Mesh) (*desired, error) {
	workloads := make(map[string]*model.Workload, len(m.Workloads))
	keys := make([]string, len(m.Workloads)) // one string per key (Key may allocate)
	for i := range m.Workloads {
		keys[i] = m.Workloads[i].Key()
		workloads[keys[i]] = &m.Workloads[i]
	}
	d := newDesired(len(m.Services))
	d.workloads = workloads
	// Sized once: at 100,000 endpoints growing them rehashed each
	// several times. A workload is at most one backend, a service has
	// about one frontend per address and port.
	d.backends = make(map[string]bpf.KmeshBackendValue, len(m.Workloads))
	d.frontends = make(map[bpf.KmeshFrontendKey]desiredFrontend, len(m.Services))
	for i := range m.Services {
		if err := d.addService(&m.Services[i], func(k string) *model.Workload { return workloads[k] }); err != nil {
			return nil, err
		}
	}
	d.order = backendOrder(keys, d.backends)
	return d, nil
}

// backendOrder returns backends in the order of keys (the mesh's
// workloads) when that is name order, else nil. The xDS source hands its
// workloads over sorted by key: sorting 500,000 backend names again was a
// third of applyBackends' CPU (0.55 s) in kmeshd's first sync. Each comes
// with its value: a lookup by name more at 500,000 backends cost ~0.1 s
// of the writes (the names' bytes are all over the heap). Workloads in a
// file keep the file's order, which rarely is name order: this stops at
// the first pair out of it.
func backendOrder(keys []string, backends map[string]bpf.KmeshBackendValue) []namedBackend {
	order := make([]namedBackend, 0, len(backends))
	for i, k := range keys {
		if i > 0 && k <= keys[i-1] {
			return nil
		}
		if v, ok := backends[k]; ok {
			order = append(order, namedBackend{k, v})
		}
	}
	return order
}

func newDesired(services int) *desired {
	return &desired{
		backends:  map[string]bpf.KmeshBackendValue{},
		services:  make(map[string]*desiredService, services),
		frontends: map[bpf.KmeshFrontendKey]desiredFrontend{},
	}
}

// addService translates one service, with the backends of its endpoints;
// workload looks endpoints up by key. This is the one place a service
// becomes slots and frontends, for Apply and Update alike.
func (d *desired) addService(s *model.Service, workload func(string) *model.Workload) error {
	mode, ok := lbModes[s.LBMode]
	if !ok {
		return fmt.Errorf("service %s: unknown load balancing mode %q", s.Key(), s.LBMode)
	}
	ds := &desiredService{lbMode: mode}
	// Most endpoints have an IPv4 address: sized once instead of grown
	// through every doubling (a tenth of translate's CPU at 10
	// endpoints a service); the IPv6 list grows as needed.
	v4 := bpf.KmeshKmFamilyKM_FAMILY_V4
	ds.endpoints[v4] = make([]weightedWorkload, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		w := workload(e.Workload)
		if w == nil {
			return fmt.Errorf("service %s: endpoint workload %s does not exist", s.Key(), e.Workload)
		}
		v, ok := backendValue(w.Addresses)
		if !ok {
			continue // no address: nothing to connect to
		}
		d.backends[e.Workload] = v
		ww := weightedWorkload{workload: e.Workload, weight: max(w.Weight, 1)}
		if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) != 0 {
			ds.endpoints[bpf.KmeshKmFamilyKM_FAMILY_V4] = append(ds.endpoints[bpf.KmeshKmFamilyKM_FAMILY_V4], ww)
		}
		if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) != 0 {
			ds.endpoints[bpf.KmeshKmFamilyKM_FAMILY_V6] = append(ds.endpoints[bpf.KmeshKmFamilyKM_FAMILY_V6], ww)
		}
	}
	if len(ds.endpoints[v4]) == 0 {
		ds.endpoints[v4] = nil // kept as long as the service: no empty capacity
	}
	translateLB(s, ds)
	d.services[s.Key()] = ds
	for _, a := range s.Addresses {
		for _, p := range s.Ports {
			if p.Protocol != model.ProtocolTCP {
				continue
			}
			k := frontendKey(a, p.Port)
			if prev, dup := d.frontends[k]; dup {
				return fmt.Errorf("service %s: address %s port %d is already used by service %s", s.Key(), a, p.Port, prev.service)
			}
			d.frontends[k] = desiredFrontend{service: s.Key(), targetPort: bpf.NetPort(p.TargetPort)}
			ds.frontends = append(ds.frontends, k)
		}
	}
	return nil
}

// slotCount is the number of slots expandSlots makes for these endpoints.
func slotCount(eps []weightedWorkload) int {
	g := uint32(0)
	for _, e := range eps {
		g = gcd(g, e.weight)
	}
	n := 0
	for _, e := range eps {
		n += int(e.weight / g)
	}
	return n
}
