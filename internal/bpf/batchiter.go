package bpf

import (
	"errors"
	"reflect"
	"unsafe"

	"github.com/cilium/ebpf"
)

// BatchIterator walks a map's entries as ebpf.MapIterator does, but reads
// them from the kernel a batch at a time (BPF_MAP_LOOKUP_BATCH) instead of
// two system calls per entry. A restarted kmeshd reads the pinned service
// tables whole before its first state (internal/dataplane stale.go): at
// 100,000 endpoints km_endpoint alone holds 200,000 entries, which took
// ~0.7 s of CPU one by one and ~0.07 s in batches of batchEntries.
//
// Keys and values are copied into the caller's variables byte for byte,
// which holds for the generated map types (fixed-size, no pointers, the
// kernel's layout), or into a *[]byte as they are. Any other variable, a
// per-CPU map, or a map the kernel cannot read in batches is walked with
// the map's own iterator.
type BatchIterator struct {
	m        *ebpf.Map
	cursor   ebpf.MapBatchCursor
	keys     reflect.Value // [n][keySize]byte
	values   reflect.Value // [n][valueSize]byte
	n, i     int           // entries in the current batch, and the next one
	batches  int           // batches read
	started  bool
	done     bool
	err      error
	fallback *ebpf.MapIterator
}

// batchEntries bounds one batch: 4096 entries of the largest key and
// value here take ~0.5 MiB.
const batchEntries = 4096

// Iterate returns an iterator over m's entries.
func Iterate(m *ebpf.Map) *BatchIterator { return &BatchIterator{m: m} }

// Next copies the next entry into keyOut and valueOut (pointers) and
// reports whether there was one; at the end, Err says whether the walk
// ended early.
func (it *BatchIterator) Next(keyOut, valueOut any) bool {
	if !it.started {
		it.started = true
		if !it.batchable(keyOut, valueOut) {
			it.fallback = it.m.Iterate()
		} else {
			it.fill()
		}
	}
	if it.fallback != nil {
		return it.fallback.Next(keyOut, valueOut)
	}
	for it.i >= it.n {
		if it.done || it.err != nil {
			return false
		}
		it.fill()
	}
	copyEntry(keyOut, it.keys.Index(it.i))
	copyEntry(valueOut, it.values.Index(it.i))
	it.i++
	return true
}

// Err returns the error that ended the walk, if any.
func (it *BatchIterator) Err() error {
	if it.fallback != nil {
		return it.fallback.Err()
	}
	return it.err
}

// fill reads the next batch. A first read the kernel refuses for this map
// (its type has no batch operations) falls back to the map's iterator.
func (it *BatchIterator) fill() {
	if it.keys == (reflect.Value{}) {
		it.keys = reflect.New(reflect.ArrayOf(batchEntries, reflect.ArrayOf(int(it.m.KeySize()), byteType))).Elem()
		it.values = reflect.New(reflect.ArrayOf(batchEntries, reflect.ArrayOf(int(it.m.ValueSize()), byteType))).Elem()
	}
	first := it.batches == 0
	it.batches++
	n, err := it.m.BatchLookup(&it.cursor, it.keys.Slice(0, batchEntries).Interface(), it.values.Slice(0, batchEntries).Interface(), nil)
	it.n, it.i = n, 0
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		it.done = true
	case err != nil && first:
		it.n = 0
		it.fallback = it.m.Iterate()
	case err != nil:
		it.err = err
	}
}

var byteType = reflect.TypeFor[byte]()

// batchable reports whether entries can be read in batches and copied
// into keyOut and valueOut byte for byte.
func (it *BatchIterator) batchable(keyOut, valueOut any) bool {
	switch it.m.Type() {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash:
		return false
	}
	return plainOf(keyOut, it.m.KeySize()) && plainOf(valueOut, it.m.ValueSize())
}

// plainOf reports whether out points to a variable of size bytes that
// holds no pointer, or to a []byte.
func plainOf(out any, size uint32) bool {
	if _, ok := out.(*[]byte); ok {
		return true
	}
	v := reflect.ValueOf(out)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return false
	}
	t := v.Type().Elem()
	return t.Size() == uintptr(size) && plain(t)
}

func plain(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	case reflect.Array:
		return plain(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !plain(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// copyEntry copies one key or value (a [size]byte) into the variable out
// points to, which plainOf accepted.
func copyEntry(out any, entry reflect.Value) {
	src := unsafe.Slice((*byte)(entry.Addr().UnsafePointer()), entry.Len())
	if b, ok := out.(*[]byte); ok {
		*b = append((*b)[:0], src...)
		return
	}
	copy(unsafe.Slice((*byte)(reflect.ValueOf(out).UnsafePointer()), entry.Len()), src)
}
