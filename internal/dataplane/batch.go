package dataplane

import (
	"errors"

	"github.com/cilium/ebpf"
)

// batchPutter is a map that writes many entries in one call: real BPF
// maps, with BPF_MAP_UPDATE_BATCH (kernel 5.6). A first sync writes
// 100,000 backends and more endpoint slots; one syscall per entry was a
// quarter of its CPU.
type batchPutter interface {
	BatchPut(keys, values any) (int, error)
}

func (m bpfMap) BatchPut(keys, values any) (int, error) {
	return m.Map.BatchUpdate(keys, values, nil)
}

// putMany writes keys[i] -> values[i] in order, in one batch where the
// map takes it and one entry at a time otherwise (older kernels, the fake
// store, wrappers that count writes). It returns how many entries were
// written before the error; the kernel's batch stops at the first entry
// it cannot write, as the loop does.
func putMany[K, V any](m Map, keys []K, values []V) (int, error) {
	if b, ok := m.(batchPutter); ok && len(keys) > 1 {
		n, err := b.BatchPut(keys, values)
		if err == nil || !errors.Is(err, ebpf.ErrNotSupported) {
			return n, err
		}
	}
	for i := range keys {
		if err := m.Put(keys[i], values[i]); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}
