package dataplane

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// bigMesh has services services of perService endpoints each, every
// endpoint a workload of its own with an IPv4 and an IPv6 address.
func bigMesh(services, perService int) *model.Mesh {
	m := &model.Mesh{}
	for s := range services {
		svc := model.Service{
			Name: fmt.Sprintf("svc-%d", s), Namespace: "bench", LBMode: model.LBRandom,
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)})},
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: model.ProtocolTCP}},
		}
		for e := range perService {
			n := s*perService + e
			w := model.Workload{
				Name: fmt.Sprintf("w-%d", n), Namespace: "bench", Node: "node-a", Weight: 1,
				Addresses: []netip.Addr{
					netip.AddrFrom4([4]byte{10, byte(1 + n>>16), byte(n >> 8), byte(n)}),
					netip.AddrFrom16([16]byte{0: 0xfd, 13: byte(n >> 16), 14: byte(n >> 8), 15: byte(n)}),
				},
			}
			m.Workloads = append(m.Workloads, w)
			svc.Endpoints = append(svc.Endpoints, model.Endpoint{Workload: w.Key()})
		}
		m.Services = append(m.Services, svc)
	}
	return m
}

// BenchmarkDataplane_Sync10kServices100kEndpoints writes a whole mesh of
// 10,000 services and 100,000 endpoints into empty maps, as a starting
// daemon does, with the workloads in key order (as the xDS source hands
// them over) and not (a file's order). Reported: time and CPU (every
// thread, the GC's included) per full sync, and the Go heap the dataplane
// keeps for it.
func BenchmarkDataplane_Sync10kServices100kEndpoints(b *testing.B) {
	benchSync(b, 10_000, bpf.DefaultLimits)
}

// BenchmarkDataplane_Sync50kServices500kEndpoints is the same at 50,000
// services and 500,000 endpoints, in maps sized as the bench sizes them.
func BenchmarkDataplane_Sync50kServices500kEndpoints(b *testing.B) {
	benchSync(b, 50_000, scaleLimits(50_000))
}

func benchSync(b *testing.B, services int, limits bpf.Limits) {
	unsorted := bigMesh(services, 10) // w-0, w-1, ... w-10: not key order
	sorted := *unsorted
	sorted.Workloads = slices.Clone(unsorted.Workloads)
	sorted.Sort()
	for _, m := range []struct {
		name string
		mesh *model.Mesh
	}{{"sorted", &sorted}, {"unsorted", unsorted}} {
		b.Run(m.name, func(b *testing.B) {
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				raw := rawMaps(b, limits)
				maps := MapStore(raw)
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				d, err := New(maps, limits, discard)
				if err != nil {
					b.Fatal(err)
				}
				cpu0 := processCPU(b)
				b.StartTimer()
				if err := d.Apply(m.mesh); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += processCPU(b) - cpu0
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
				runtime.KeepAlive(d)
				raw.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// processCPU is the CPU time the process has used, every thread's: on a
// shared machine a full sync's wall time counts the waits for a core.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDataplane_UpdateOneService10k changes one endpoint of one
// service in a mesh of 10,000 services: the cost of a typical push.
func BenchmarkDataplane_UpdateOneService10k(b *testing.B) {
	m := bigMesh(10_000, 10)
	maps := newMaps(b, bpf.DefaultLimits)
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		b.Fatal(err)
	}
	full := m.Services[0].Endpoints
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			m.Services[0].Endpoints = full[:len(full)-1]
		} else {
			m.Services[0].Endpoints = full
		}
		if err := d.Apply(m); err != nil {
			b.Fatal(err)
		}
	}
}
