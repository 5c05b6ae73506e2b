package bpf

import (
	"fmt"
	"reflect"
	"testing"
)

// walk collects a map's entries through an iterator of either kind.
func walk[K comparable, V any](t *testing.T, it interface {
	Next(k, v any) bool
	Err() error
}) map[K]V {
	t.Helper()
	out := map[K]V{}
	var k K
	var v V
	for it.Next(&k, &v) {
		if _, dup := out[k]; dup {
			t.Fatalf("key %+v twice", k)
		}
		out[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestIterate_SameEntriesAsTheMapsIterator: on real maps of each kind the
// dataplane reads (a hash of more entries than one batch, an array, an
// LRU hash, an LPM trie, a per-CPU array, which Iterate leaves to the map's
// own iterator, and an empty map), and into []byte variables, Iterate
// yields exactly the entries ebpf's own iterator yields, values included.
func TestIterate_SameEntriesAsTheMapsIterator(t *testing.T) {
	requireRoot(t)
	limits := Limits{Services: 128, Frontends: 128, Endpoints: 2 * batchEntries, Backends: 128, Workloads: 128, Sockets: 128,
		Policies: 128, PolicyMatches: 128, PolicyValues: 128, PolicyIPBlocks: 128, PolicyRefs: 128, WorkloadAddresses: 128, AffinityClients: 128}
	maps, err := NewMaps(limits)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	for i := range uint32(batchEntries + 1000) {
		k := KmeshEndpointKey{ServiceId: i / 7, Slot: i % 7, Family: uint8(i % 2), Gen: uint8(i % 3), Group: uint16(i % 5)}
		if err := maps.KmEndpoint.Put(k, KmeshEndpointValue{BackendId: i*3 + 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range uint32(100) {
		if err := maps.KmRr.Put(i, i*i); err != nil {
			t.Fatal(err)
		}
		ak := KmeshLbAffinityKey{ServiceId: i, Client: [4]uint32{0, 0, 0xffff0000, i}}
		if err := maps.KmLbAffinity.Put(ak, KmeshLbAffinity{BackendId: i + 5, LastNs: uint64(i) << 40}); err != nil {
			t.Fatal(err)
		}
		ik := KmeshAuthzIpKey{Prefixlen: 64 + 32 + 24, PolicyId: i, Addr: [4]uint32{0, 0, 0xffff0000, i << 8}}
		if err := maps.KmAuthzIp.Put(ik, uint8(i)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, batch, own any) {
		t.Run(name, func(t *testing.T) {
			if !reflect.DeepEqual(batch, own) {
				t.Fatalf("Iterate and the map's iterator differ: %d vs %d entries", reflect.ValueOf(batch).Len(), reflect.ValueOf(own).Len())
			}
			if reflect.ValueOf(batch).Len() == 0 && name != "empty km_backend" {
				t.Fatalf("no entries")
			}
		})
	}
	it := Iterate(maps.KmEndpoint)
	check("km_endpoint (hash, several batches)",
		walk[KmeshEndpointKey, KmeshEndpointValue](t, it),
		walk[KmeshEndpointKey, KmeshEndpointValue](t, maps.KmEndpoint.Iterate()))
	if it.fallback != nil || it.batches < 2 {
		t.Errorf("km_endpoint of %d entries read in %d batches (fell back: %v), want batches of %d", batchEntries+1000, it.batches, it.fallback != nil, batchEntries)
	}

	check("km_rr (array)", walk[uint32, uint32](t, Iterate(maps.KmRr)), walk[uint32, uint32](t, maps.KmRr.Iterate()))
	check("km_lb_affinity (LRU hash)",
		walk[KmeshLbAffinityKey, KmeshLbAffinity](t, Iterate(maps.KmLbAffinity)),
		walk[KmeshLbAffinityKey, KmeshLbAffinity](t, maps.KmLbAffinity.Iterate()))
	check("km_authz_ip (LPM trie)",
		walk[KmeshAuthzIpKey, uint8](t, Iterate(maps.KmAuthzIp)),
		walk[KmeshAuthzIpKey, uint8](t, maps.KmAuthzIp.Iterate()))
	check("km_authz_stats (per CPU)",
		fmt.Sprint(walk[uint32, []KmeshAuthzStat](t, Iterate(maps.KmAuthzStats))),
		fmt.Sprint(walk[uint32, []KmeshAuthzStat](t, maps.KmAuthzStats.Iterate())))
	bytesOf := func(it interface {
		Next(k, v any) bool
		Err() error
	}) map[string]string {
		out := map[string]string{}
		var k, v []byte
		for it.Next(&k, &v) {
			out[string(k)] = string(v)
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	check("km_endpoint into []byte", bytesOf(Iterate(maps.KmEndpoint)), bytesOf(maps.KmEndpoint.Iterate()))
	check("empty km_backend",
		walk[uint32, KmeshBackendValue](t, Iterate(maps.KmBackend)),
		walk[uint32, KmeshBackendValue](t, maps.KmBackend.Iterate()))
}
