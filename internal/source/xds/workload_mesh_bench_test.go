package xds

import (
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/benchcpu"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// BenchmarkBuildWorkloadMesh_FirstState times what a first state costs
// after it is decoded: the store filled from converted resources (the
// bench's mesh: 10 endpoints per service, in the order the response
// brings them) and the full build, which run on one core before the
// data plane gets the mesh.
//
//	go test -run '^$' -bench BuildWorkloadMesh -benchmem ./internal/source/xds/
func BenchmarkBuildWorkloadMesh_FirstState(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=%d", n, 10*n), func(b *testing.B) {
			rs := benchMesh(b, n, 10*n)
			values, errs := convertAll(addressHandler{}, rs)
			for i, err := range errs {
				if err != nil {
					b.Fatalf("resource %s: %v", rs[i].GetName(), err)
				}
			}
			runtime.GC()
			cpu0 := benchcpu.Used()
			b.ResetTimer()
			for b.Loop() {
				st := newStore()
				st.reserve(AddressType, len(rs))
				for i, r := range rs {
					st.put(AddressType, r.GetName(), r.GetVersion(), values[i])
				}
				if got := buildWorkloadMesh(st); len(got.mesh.Workloads) != 10*n || len(got.mesh.Services) != n {
					b.Fatalf("%d workloads, %d services; want %d, %d", len(got.mesh.Workloads), len(got.mesh.Services), 10*n, n)
				}
			}
			// CPU, not wall time: the build runs on more than one core.
			b.ReportMetric(float64((benchcpu.Used()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkConvertAll_FirstState times the conversion of a first state's
// decoded response (the bench's mesh), which runs on every core before
// the build.
//
//	go test -run '^$' -bench ConvertAll -benchmem ./internal/source/xds/
func BenchmarkConvertAll_FirstState(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=%d", n, 10*n), func(b *testing.B) {
			rs := benchMesh(b, n, 10*n)
			runtime.GC()
			cpu0 := benchcpu.Used()
			b.ResetTimer()
			for b.Loop() {
				_, errs := convertAll(addressHandler{}, rs)
				for i, err := range errs {
					if err != nil {
						b.Fatalf("resource %s: %v", rs[i].GetName(), err)
					}
				}
			}
			b.ReportMetric(float64((benchcpu.Used()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkNewWorkloadIndex_FirstState times the change index of a first
// state, which is built while the data plane writes the mesh (commit's
// alongside): the two share the machine's cores.
//
//	go test -run '^$' -bench NewWorkloadIndex -benchmem ./internal/source/xds/
func BenchmarkNewWorkloadIndex_FirstState(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=%d", n, 10*n), func(b *testing.B) {
			rs := benchMesh(b, n, 10*n)
			values, _ := convertAll(addressHandler{}, rs)
			st := newStore()
			for i, r := range rs {
				st.put(AddressType, r.GetName(), r.GetVersion(), values[i])
			}
			b0 := buildWorkloadMesh(st)
			runtime.GC()
			cpu0 := benchcpu.Used()
			b.ResetTimer()
			for b.Loop() {
				if ix := newWorkloadIndex(st, b0); len(ix.workloads) != 10*n {
					b.Fatalf("%d workloads indexed, want %d", len(ix.workloads), 10*n)
				}
			}
			b.ReportMetric(float64((benchcpu.Used()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// benchMesh is the bench's mesh (bench/cmd/kmesh-bench xdsScale) as a
// response's resources, services first and then endpoints in a scattered
// order, as a server's map hands them.
func benchMesh(tb testing.TB, services, endpoints int) []*discovery.Resource {
	rs := make([]*discovery.Resource, 0, services+endpoints)
	for i := range services {
		name, a := xdstest.Service("default", fmt.Sprintf("svc-%05d", i), []string{netip.AddrFrom4([4]byte{10, 96, byte((i + 1) >> 8), byte(i + 1)}).String()}, xdstest.Port{Service: 80, Target: 8080})
		any, err := anypb.New(a)
		if err != nil {
			tb.Fatal(err)
		}
		rs = append(rs, &discovery.Resource{Name: name, Version: "1", Resource: any})
	}
	for k := range endpoints {
		n := (k * 7919) % endpoints // scattered, as a map's order
		w := xdstest.Workload{Namespace: "default", Name: "ep-" + strconv.Itoa(n), Node: "remote",
			IPs:      []string{netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}).String()},
			Services: map[string][]xdstest.Port{fmt.Sprintf("default/svc-%05d", n%services): {{Service: 80, Target: 8080}}}}
		name, a := w.Address()
		any, err := anypb.New(a)
		if err != nil {
			tb.Fatal(err)
		}
		rs = append(rs, &discovery.Resource{Name: name, Version: "1", Resource: any})
	}
	return rs
}
