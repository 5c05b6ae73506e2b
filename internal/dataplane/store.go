package dataplane

import (
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
}

type bpfMap struct{ *ebpf.Map }

func (m bpfMap) Iterate() Iterator { return m.Map.Iterate() }

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
	}
}
