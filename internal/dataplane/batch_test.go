package dataplane

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// TestPutMany_RealMapStopsWhereOneAtATimeWould: a batch into a real map
// that fills up part way writes the entries before the one that does not
// fit, reports how many, and names the kernel's error, as the entry by
// entry loop does on the fake store.
func TestPutMany_RealMapStopsWhereOneAtATimeWould(t *testing.T) {
	limits := bpf.DefaultLimits
	limits.Backends = 3
	real := newMaps(t, limits)
	if _, ok := real.KmBackend.(batchPutter); !ok {
		t.Fatal("real maps do not write in batches")
	}
	fake := NewFakeStore(limits)
	ids := []uint32{7, 8, 9, 10, 11}
	values := make([]bpf.KmeshBackendValue, len(ids))
	for i := range values {
		values[i] = bpf.KmeshBackendValue{Addr4: uint32(100 + i), Flags: uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4)}
	}
	for name, s := range map[string]*Store{"real": real, "fake": fake.Store} {
		n, err := putMany(s.KmBackend, ids, values)
		if n != 3 || !errors.Is(err, unix.E2BIG) {
			t.Fatalf("%s: putMany into a map of 3 = %d, %v; want 3, E2BIG", name, n, err)
		}
		for i, id := range ids {
			var got bpf.KmeshBackendValue
			err := s.KmBackend.Lookup(id, &got)
			if i < 3 && (err != nil || got != values[i]) {
				t.Errorf("%s: backend %d = %+v, %v; want %+v", name, id, got, err, values[i])
			}
			if i >= 3 && err == nil {
				t.Errorf("%s: backend %d written after the map was full", name, id)
			}
		}
	}
	// All of it when it fits: one batch on the real map.
	limits.Backends = 16
	real = newMaps(t, limits)
	if n, err := putMany(real.KmBackend, ids, values); n != len(ids) || err != nil {
		t.Fatalf("putMany = %d, %v; want %d, nil", n, err, len(ids))
	}
	var got bpf.KmeshBackendValue
	if err := real.KmBackend.Lookup(uint32(11), &got); err != nil || got != values[4] {
		t.Fatalf("backend 11 = %+v, %v; want %+v", got, err, values[4])
	}
}
