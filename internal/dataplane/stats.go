package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// MapStat is the fill of one map.
type MapStat struct {
	Name     string
	Entries  uint32
	Capacity uint32
}

// MapStats counts the entries of the hash maps (km_manage, km_frontend,
// km_service, km_endpoint, km_backend, and the km_authz_* tables) by walking
// their keys; it only reads.
// While an Apply runs the count may be off by the entries it moves, never
// above the capacity.
func MapStats(maps *bpf.KmeshMaps) ([]MapStat, error) {
	list := []struct {
		name string
		m    *ebpf.Map
	}{
		{bpf.KmeshMapKmBackend, maps.KmBackend},
		{bpf.KmeshMapKmEndpoint, maps.KmEndpoint},
		{bpf.KmeshMapKmFrontend, maps.KmFrontend},
		{bpf.KmeshMapKmManage, maps.KmManage},
		{bpf.KmeshMapKmService, maps.KmService},
		{bpf.KmeshMapKmAuthzAddr, maps.KmAuthzAddr},
		{bpf.KmeshMapKmAuthzIp, maps.KmAuthzIp},
		{bpf.KmeshMapKmAuthzList, maps.KmAuthzList},
		{bpf.KmeshMapKmAuthzMatch, maps.KmAuthzMatch},
		{bpf.KmeshMapKmAuthzNetns, maps.KmAuthzNetns},
		{bpf.KmeshMapKmAuthzPol, maps.KmAuthzPol},
		{bpf.KmeshMapKmAuthzVal, maps.KmAuthzVal},
	}
	out := make([]MapStat, 0, len(list))
	for _, l := range list {
		n, err := countKeys(l.m)
		if err != nil {
			return out, fmt.Errorf("read %s: %w", l.name, err)
		}
		out = append(out, MapStat{Name: l.name, Entries: n, Capacity: l.m.MaxEntries()})
	}
	return out, nil
}

// countKeys walks the keys of a hash map. A key deleted under the walk makes
// the kernel restart it from the first key, so the walk stops at capacity.
func countKeys(m *ebpf.Map) (uint32, error) {
	var n uint32
	var key any // nil asks for the first key
	for n < m.MaxEntries() {
		next, err := m.NextKeyBytes(key)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			// The key was deleted between two calls; older kernels say so
			// instead of restarting.
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if next == nil {
			return n, nil
		}
		n++
		key = next
	}
	return n, nil
}
