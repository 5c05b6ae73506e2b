package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// Map is the part of a BPF map the dataplane uses. Real maps are
// *ebpf.Map (MapStore); the fake store (NewFakeStore) keeps entries in
// memory, so the dataplane's logic also runs, and is golden-tested,
// without root.
type Map interface {
	Lookup(key, valueOut any) error
	Put(key, value any) error
	Delete(key any) error
	Iterate() Iterator
	MaxEntries() uint32
	String() string
}

// Iterator walks a map's entries (ebpf.MapIterator's shape).
type Iterator interface {
	Next(keyOut, valueOut any) bool
	Err() error
}

// Store is the set of maps the dataplane writes (and the connect, sockops
// and ingress programs read). Fields carry the names of bpf.KmeshMaps.
type Store struct {
	KmFrontend, KmService, KmEndpoint, KmBackend, KmRr Map

	KmAuthzPol, KmAuthzMatch, KmAuthzVal, KmAuthzIp     Map
	KmAuthzList, KmAuthzGlob, KmAuthzAddr, KmAuthzNetns Map
	// KmAuthzStats is per CPU: values are []bpf.KmeshAuthzStat.
	KmAuthzStats Map

	// Locality, affinity and health (lb.go).
	KmLbPrio, KmLbClient, KmLbConf, KmLbBackend, KmLbEject, KmLbAffinity Map
	// KmMaglev holds whole tables: an inner map per service and family.
	KmMaglev MaglevTables
	// KmTunnel: workload addresses whose connections go through the
	// HBONE tunnel (tunnel.go).
	KmTunnel Map
	// KmTunnelSrc: each enrolled namespace's addresses, which a socket
	// sent to the tunnel is bound to (tunnelsrc.go).
	KmTunnelSrc Map
}

// MaglevTables replaces and removes Maglev lookup tables (km_maglev).
type MaglevTables interface {
	// Put makes table the one at index, replacing any other whole.
	Put(index uint32, table []uint32) error
	Delete(index uint32) error
	// Get reads the table at index (a restart adopts what matches).
	Get(index uint32) ([]uint32, error)
}

// maglevMap writes tables as inner maps of the real km_maglev.
type maglevMap struct{ outer *ebpf.Map }

func (m maglevMap) Put(index uint32, table []uint32) error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(len(table))})
	if err != nil {
		return fmt.Errorf("create maglev table: %w", err)
	}
	defer inner.Close() // the outer map keeps it
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
		for i, v := range table {
			if err := inner.Put(uint32(i), v); err != nil {
				return fmt.Errorf("fill maglev table: %w", err)
			}
		}
	}
	return m.outer.Put(index, inner)
}

func (m maglevMap) Delete(index uint32) error { return m.outer.Delete(index) }

func (m maglevMap) Get(index uint32) ([]uint32, error) {
	var inner *ebpf.Map
	if err := m.outer.Lookup(index, &inner); err != nil {
		return nil, err
	}
	defer inner.Close()
	n := inner.MaxEntries()
	keys, table := make([]uint32, n), make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	got, err := inner.BatchLookup(&cursor, keys, table, nil)
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		if got == int(n) {
			for i, k := range keys {
				if k != uint32(i) {
					break // out of order: read one by one
				}
				if i == len(keys)-1 {
					return table, nil
				}
			}
		}
	}
	for i := range table {
		if err := inner.Lookup(uint32(i), &table[i]); err != nil {
			return nil, fmt.Errorf("read maglev table: %w", err)
		}
	}
	return table, nil
}

type bpfMap struct{ *ebpf.Map }

// Iterate reads the map in batches: a restart reads the pinned service
// tables whole (stale.go).
func (m bpfMap) Iterate() Iterator { return bpf.Iterate(m.Map) }

// MapStore is the store of real BPF maps.
func MapStore(maps *bpf.KmeshMaps) *Store {
	return &Store{
		KmFrontend: bpfMap{maps.KmFrontend}, KmService: bpfMap{maps.KmService},
		KmEndpoint: bpfMap{maps.KmEndpoint}, KmBackend: bpfMap{maps.KmBackend}, KmRr: bpfMap{maps.KmRr},
		KmAuthzPol: bpfMap{maps.KmAuthzPol}, KmAuthzMatch: bpfMap{maps.KmAuthzMatch},
		KmAuthzVal: bpfMap{maps.KmAuthzVal}, KmAuthzIp: bpfMap{maps.KmAuthzIp},
		KmAuthzList: bpfMap{maps.KmAuthzList}, KmAuthzGlob: bpfMap{maps.KmAuthzGlob},
		KmAuthzAddr: bpfMap{maps.KmAuthzAddr}, KmAuthzNetns: bpfMap{maps.KmAuthzNetns},
		KmAuthzStats: bpfMap{maps.KmAuthzStats},
		KmLbPrio:     bpfMap{maps.KmLbPrio}, KmLbClient: bpfMap{maps.KmLbClient}, KmLbConf: bpfMap{maps.KmLbConf},
		KmLbBackend: bpfMap{maps.KmLbBackend}, KmLbEject: bpfMap{maps.KmLbEject}, KmLbAffinity: bpfMap{maps.KmLbAffinity},
		KmMaglev: maglevMap{maps.KmMaglev},
		KmTunnel: bpfMap{maps.KmTunnel}, KmTunnelSrc: bpfMap{maps.KmTunnelSrc},
	}
}
