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
	maps := newMaps(t, limits)
	d, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(hello(model.LBRandom,
		workload("hello-1", 1, "10.1.1.11", "fd00:1:1::11"),
		workload("hello-2", 1, "10.1.2.12"))); err != nil {
		t.Fatal(err)
	}
	stats, err := MapStats(maps)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(stats)
	want := "[{km_backend 2 8} {km_endpoint 3 16} {km_frontend 2 8} {km_manage 0 2} {km_service 1 4} " +
		"{km_authz_addr 0 262144} {km_authz_ip 0 65536} {km_authz_list 0 65536} {km_authz_match 0 65536} " +
		"{km_authz_netns 0 2} {km_authz_pol 0 4096} {km_authz_val 0 262144}]"
	if got != want {
		t.Fatalf("map stats %s, want %s", got, want)
	}
}
