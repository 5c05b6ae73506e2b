package dataplane

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// FakeStore is a Store whose maps live in memory: keys and values are kept
// in their kernel byte layout (the generated types, native byte order), a
// hash map refuses a new key past its capacity with E2BIG as the kernel
// does, and Fail injects errors. It stands beside real-map tests of the
// same behaviour (STYLE: golden tests on a fake store and on real maps).
type FakeStore struct {
	*Store
	mu    sync.Mutex
	maps  map[string]*fakeMap
	fail  func(op, mapName string) error
	write int // Put and Delete calls so far, for tests that fail the n-th
}

// NewFakeStore returns empty in-memory maps sized by limits as bpf.NewMaps
// sizes the real ones.
func NewFakeStore(limits bpf.Limits) *FakeStore {
	f := &FakeStore{maps: map[string]*fakeMap{}}
	m := func(name string, capacity uint32, array bool) *fakeMap {
		fm := &fakeMap{store: f, name: name, capacity: capacity, array: array, entries: map[string][]byte{}}
		f.maps[name] = fm
		return fm
	}
	f.Store = &Store{
		KmFrontend:   m(bpf.KmeshMapKmFrontend, limits.Frontends, false),
		KmService:    m(bpf.KmeshMapKmService, limits.Services, false),
		KmEndpoint:   m(bpf.KmeshMapKmEndpoint, limits.Endpoints, false),
		KmBackend:    m(bpf.KmeshMapKmBackend, limits.Backends, false),
		KmRr:         m(bpf.KmeshMapKmRr, limits.Services+1, true),
		KmAuthzPol:   m(bpf.KmeshMapKmAuthzPol, limits.Policies, false),
		KmAuthzMatch: m(bpf.KmeshMapKmAuthzMatch, limits.PolicyMatches, false),
		KmAuthzVal:   m(bpf.KmeshMapKmAuthzVal, limits.PolicyValues, false),
		KmAuthzIp:    m(bpf.KmeshMapKmAuthzIp, limits.PolicyIPBlocks, false),
		KmAuthzList:  m(bpf.KmeshMapKmAuthzList, limits.PolicyRefs, false),
		KmAuthzGlob:  m(bpf.KmeshMapKmAuthzGlob, 1, false), // a hash in the kernel (maps.h)
		KmAuthzAddr:  m(bpf.KmeshMapKmAuthzAddr, limits.WorkloadAddresses, false),
		KmAuthzNetns: m(bpf.KmeshMapKmAuthzNetns, limits.Workloads, false),
		KmAuthzStats: m(bpf.KmeshMapKmAuthzStats, limits.Policies+1, true),
		KmLbPrio:     m(bpf.KmeshMapKmLbPrio, limits.Services*4, false),
		KmLbClient:   m(bpf.KmeshMapKmLbClient, limits.Workloads, false),
		KmLbConf:     m(bpf.KmeshMapKmLbConf, limits.Services, false),
		KmLbBackend:  m(bpf.KmeshMapKmLbBackend, limits.Endpoints, false),
		KmLbEject:    m(bpf.KmeshMapKmLbEject, limits.Services+1, true),
		KmLbAffinity: m(bpf.KmeshMapKmLbAffinity, limits.AffinityClients, false),
		KmTunnel:     m(bpf.KmeshMapKmTunnel, limits.WorkloadAddresses, false),
		KmTunnelSrc:  m(bpf.KmeshMapKmTunnelSrc, limits.Workloads, false),
	}
	f.Store.KmMaglev = fakeMaglev{m(bpf.KmeshMapKmMaglev, (limits.Services+1)*2, false)}
	return f
}

// fakeMaglev keeps each table as one value.
type fakeMaglev struct{ m *fakeMap }

func (f fakeMaglev) Put(index uint32, table []uint32) error { return f.m.Put(index, table) }
func (f fakeMaglev) Delete(index uint32) error              { return f.m.Delete(index) }
func (f fakeMaglev) Get(index uint32) ([]uint32, error) {
	var t []uint32
	err := f.m.Lookup(index, &t)
	return t, err
}

// Fail makes every Put and Delete call fn first (op is "put" or
// "delete"); a non-nil error fails the call and writes nothing. nil
// removes the hook.
func (f *FakeStore) Fail(fn func(op, mapName string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

// Writes is the number of Put and Delete calls so far.
func (f *FakeStore) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.write
}

// Len is the number of entries of a map.
func (f *FakeStore) Len(mapName string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.maps[mapName].entries)
}

type fakeMap struct {
	store    *FakeStore
	name     string
	capacity uint32
	// array maps (km_rr, km_authz_stats, km_lb_eject) take any index
	// below the capacity and cannot delete, as in the kernel.
	array   bool
	entries map[string][]byte // key bytes -> value bytes
}

func encode(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	b, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		return nil, fmt.Errorf("fake map: encode %T: %w", v, err)
	}
	return b, nil
}

// decode fills out (a pointer) from b; a nil slice is sized to fit, as
// ebpf does for per-CPU values.
func decode(b []byte, out any) error {
	if p, ok := out.(*[]byte); ok {
		*p = slices.Clone(b)
		return nil
	}
	rv := reflect.ValueOf(out)
	if rv.Kind() == reflect.Pointer && rv.Elem().Kind() == reflect.Slice {
		size := binary.Size(reflect.New(rv.Elem().Type().Elem()).Elem().Interface())
		if size > 0 {
			rv.Elem().Set(reflect.MakeSlice(rv.Elem().Type(), len(b)/size, len(b)/size))
		}
	}
	if _, err := binary.Decode(b, binary.NativeEndian, out); err != nil {
		return fmt.Errorf("fake map: decode %T: %w", out, err)
	}
	return nil
}

func (m *fakeMap) Lookup(key, valueOut any) error {
	k, err := encode(key)
	if err != nil {
		return err
	}
	m.store.mu.Lock()
	v, ok := m.entries[string(k)]
	m.store.mu.Unlock()
	if !ok {
		return fmt.Errorf("lookup %s: %w", m.name, ebpf.ErrKeyNotExist)
	}
	return decode(v, valueOut)
}

func (m *fakeMap) Put(key, value any) error {
	k, err := encode(key)
	if err != nil {
		return err
	}
	v, err := encode(value)
	if err != nil {
		return err
	}
	m.store.mu.Lock()
	defer m.store.mu.Unlock()
	m.store.write++
	if m.store.fail != nil {
		if err := m.store.fail("put", m.name); err != nil {
			return fmt.Errorf("update %s: %w", m.name, err)
		}
	}
	if m.array {
		if len(k) != 4 || binary.NativeEndian.Uint32(k) >= m.capacity {
			return fmt.Errorf("update %s: %w", m.name, unix.E2BIG)
		}
	} else if _, ok := m.entries[string(k)]; !ok && len(m.entries) >= int(m.capacity) {
		return fmt.Errorf("update %s: %w", m.name, unix.E2BIG)
	}
	m.entries[string(k)] = v
	return nil
}

func (m *fakeMap) Delete(key any) error {
	k, err := encode(key)
	if err != nil {
		return err
	}
	m.store.mu.Lock()
	defer m.store.mu.Unlock()
	m.store.write++
	if m.store.fail != nil {
		if err := m.store.fail("delete", m.name); err != nil {
			return fmt.Errorf("delete %s: %w", m.name, err)
		}
	}
	if m.array {
		return fmt.Errorf("delete %s: %w", m.name, unix.EINVAL)
	}
	if _, ok := m.entries[string(k)]; !ok {
		return fmt.Errorf("delete %s: %w", m.name, ebpf.ErrKeyNotExist)
	}
	delete(m.entries, string(k))
	return nil
}

func (m *fakeMap) MaxEntries() uint32 { return m.capacity }

func (m *fakeMap) String() string { return "FakeMap(" + m.name + ")" }

// Iterate walks a snapshot of the entries in key order.
func (m *fakeMap) Iterate() Iterator {
	m.store.mu.Lock()
	defer m.store.mu.Unlock()
	keys := make([]string, 0, len(m.entries))
	for k := range m.entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	it := &fakeIterator{}
	for _, k := range keys {
		it.keys = append(it.keys, []byte(k))
		it.vals = append(it.vals, m.entries[k])
	}
	return it
}

type fakeIterator struct {
	keys, vals [][]byte
	err        error
}

func (it *fakeIterator) Next(keyOut, valueOut any) bool {
	if it.err != nil || len(it.keys) == 0 {
		return false
	}
	k, v := it.keys[0], it.vals[0]
	it.keys, it.vals = it.keys[1:], it.vals[1:]
	if err := decode(k, keyOut); err != nil {
		it.err = err
		return false
	}
	if err := decode(v, valueOut); err != nil {
		it.err = err
		return false
	}
	return true
}

func (it *fakeIterator) Err() error { return it.err }
