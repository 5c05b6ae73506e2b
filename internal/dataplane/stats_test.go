package dataplane

import (
	"fmt"
	"testing"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

func TestMapStats_CountsEntriesAndCapacity(t *testing.T) {
	limits := bpf.DefaultLimits
	limits.Services, limits.Frontends, limits.Endpoints, limits.Backends, limits.Workloads = 4, 8, 16, 8, 2
	testStores(t, limits, func(t *testing.T, maps *Store) {
		d, err := New(maps, limits, discard)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Apply(hello(model.LBRandom,
			workload("hello-1", 1, "10.1.1.11", "fd00:1:1::11"),
			workload("hello-2", 1, "10.1.2.12"))); err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprint(d.MapStats())
		want := "[{km_backend 2 8} {km_endpoint 3 16} {km_frontend 2 8} {km_service 1 4} " +
			"{km_authz_addr 0 262144} {km_authz_ip 0 65536} {km_authz_list 0 65536} {km_authz_match 0 65536} " +
			"{km_authz_netns 0 2} {km_authz_pol 0 4096} {km_authz_val 0 262144}]"
		if got != want {
			t.Fatalf("map stats %s, want %s", got, want)
		}
	})
}

// checkStats holds MapStats, counted in Go, to a walk of every map.
func checkStats(t *testing.T, d *Dataplane, s *Store) {
	t.Helper()
	byName := map[string]Map{
		bpf.KmeshMapKmBackend: s.KmBackend, bpf.KmeshMapKmEndpoint: s.KmEndpoint, bpf.KmeshMapKmFrontend: s.KmFrontend,
		bpf.KmeshMapKmService: s.KmService, bpf.KmeshMapKmAuthzAddr: s.KmAuthzAddr, bpf.KmeshMapKmAuthzIp: s.KmAuthzIp,
		bpf.KmeshMapKmAuthzList: s.KmAuthzList, bpf.KmeshMapKmAuthzMatch: s.KmAuthzMatch, bpf.KmeshMapKmAuthzNetns: s.KmAuthzNetns,
		bpf.KmeshMapKmAuthzPol: s.KmAuthzPol, bpf.KmeshMapKmAuthzVal: s.KmAuthzVal,
	}
	for _, st := range d.MapStats() {
		n, err := countKeys(byName[st.Name])
		if err != nil {
			t.Fatal(err)
		}
		if n != st.Entries {
			t.Errorf("MapStats says %s has %d entries; the map has %d", st.Name, st.Entries, n)
		}
	}
}

// TestDataplane_MapStatsMatchMaps applies meshes with policies, changes and
// removals, and after each holds the counts to the maps.
func TestDataplane_MapStatsMatchMaps(t *testing.T) {
	testStores(t, bpf.DefaultLimits, func(t *testing.T, s *Store) {
		d, err := New(s, bpf.DefaultLimits, discard)
		if err != nil {
			t.Fatal(err)
		}
		h1, h2, h3 := workload("hello-1", 1, "10.1.1.11", "fd00:1:1::11"), workload("hello-2", 3, "10.1.2.12"), workload("hello-3", 1, "fd00:1:2::13")
		for i, m := range []*model.Mesh{
			hello(model.LBRandom, h1, h2, h3),
			policyMesh(3),
			hello(model.LBRoundRobin, h1, h3),
			policyMesh(1),
			{},
		} {
			if err := d.Apply(m); err != nil {
				t.Fatalf("mesh %d: %v", i, err)
			}
			checkStats(t, d, s)
		}
	})
}
