package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/maglev"
)

// spec returns the programs and maps with map sizes set from limits.
func spec(limits Limits) (*ebpf.CollectionSpec, error) {
	s, err := LoadKmesh()
	if err != nil {
		return nil, fmt.Errorf("read embedded programs: %w", err)
	}
	sizes := map[string]uint32{
		KmeshMapKmManage:     limits.Workloads,
		KmeshMapKmFrontend:   limits.Frontends,
		KmeshMapKmService:    limits.Services,
		KmeshMapKmEndpoint:   limits.Endpoints,
		KmeshMapKmBackend:    limits.Backends,
		KmeshMapKmRr:         limits.Services + 1, // ids start at 1
		KmeshMapKmSocks:      limits.Sockets,
		KmeshMapKmRedirBytes: limits.Sockets,
		KmeshMapKmAuthzAddr:  limits.WorkloadAddresses,
		KmeshMapKmAuthzGlob:  1,
		KmeshMapKmAuthzList:  limits.PolicyRefs,
		KmeshMapKmAuthzPol:   limits.Policies,
		KmeshMapKmAuthzMatch: limits.PolicyMatches,
		KmeshMapKmAuthzVal:   limits.PolicyValues,
		KmeshMapKmAuthzIp:    limits.PolicyIPBlocks,
		KmeshMapKmAuthzNetns: limits.Workloads,
		KmeshMapKmAuthzStats: limits.Policies + 1, // index 0: no policy
		// Locality, affinity, health (bpf/include/lb.h).
		KmeshMapKmLbPrio:     limits.Services * 4, // per family and generation, one client class
		KmeshMapKmLbClient:   limits.Workloads,
		KmeshMapKmLbConf:     limits.Services,
		KmeshMapKmLbAffinity: limits.AffinityClients,
		KmeshMapKmLbBackend:  limits.Endpoints,
		KmeshMapKmLbEject:    limits.Services + 1, // ids start at 1
		KmeshMapKmMaglev:     (limits.Services + 1) * 2,
		KmeshMapKmTunnel:     limits.WorkloadAddresses,
		KmeshMapKmTunnelDst:  limits.Sockets,
		KmeshMapKmTunnelSrc:  limits.Workloads,
	}
	for name, m := range s.Maps {
		n, ok := sizes[name]
		if !ok {
			continue
		}
		if n == 0 {
			return nil, fmt.Errorf("map %s: size must be at least 1", name)
		}
		m.MaxEntries = n
	}
	s.Maps[KmeshMapKmMaglev].InnerMap.MaxEntries = maglev.DefaultSize
	if err := s.Variables["km_maglev_size"].Set(uint32(maglev.DefaultSize)); err != nil {
		return nil, fmt.Errorf("set km_maglev_size: %w", err)
	}
	return s, nil
}

// NewMaps creates the maps alone, unpinned and unattached to any program:
// for tests and benchmarks of what writes them.
func NewMaps(limits Limits) (*KmeshMaps, error) {
	s, err := spec(limits)
	if err != nil {
		return nil, err
	}
	var maps KmeshMaps
	if err := s.LoadAndAssign(&maps, nil); err != nil {
		return nil, fmt.Errorf("create maps: %w", err)
	}
	return &maps, nil
}
