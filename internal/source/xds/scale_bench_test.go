package xds

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/kmesh-go/kmesh/internal/benchcpu"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// deltaSink is what kmeshd does with the client's output (daemon.apply
// and daemon.update): the first mesh as a full sync, then changes checked
// against and applied to a model.State, then written by Update.
type deltaSink struct {
	dp      *dataplane.Dataplane
	mu      sync.Mutex
	st      *model.State
	written chan time.Time
}

func (s *deltaSink) apply(m *model.Mesh) error {
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	if st != nil {
		return s.update(st.DiffMesh(m))
	}
	if err := s.dp.Apply(m); err != nil {
		return err
	}
	st = model.NewState()
	st.Apply(st.DiffMesh(m))
	s.mu.Lock()
	s.st = st
	s.mu.Unlock()
	s.written <- time.Now()
	return nil
}

func (s *deltaSink) update(c *model.Changes) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.st.Check(c); err != nil {
		return err
	}
	undo := s.st.Apply(c)
	if err := s.dp.Update(c, s.st); err != nil {
		s.st.Apply(undo)
		return err
	}
	s.written <- time.Now()
	return nil
}

// scaleWorkloads are the pods of service i: 10 per service, each in one.
// Services are named namespace/name (xdstest makes the hostname).
func scaleWorkload(svc, i int) xdstest.Workload {
	return xdstest.Workload{Namespace: "default", Name: fmt.Sprintf("pod-%d-%d", svc, i), Node: "node-a",
		IPs:      []string{fmt.Sprintf("10.%d.%d.%d", 64+svc/4096, (svc/16)%256, (svc%16)*16+i)},
		Services: map[string][]xdstest.Port{fmt.Sprintf("default/svc-%d", svc): {{Service: 80, Target: 8080}}}}
}

// BenchmarkWorkloadClient_OneEndpointChangeAtScale serves services x 10
// pods from a go-control-plane delta server (xdstest.StartPush: a cache
// that pushes only what changed, as istiod does; go-control-plane's
// LinearCache walks every resource per push and per ACK), lets
// the workload client sync them into real BPF maps through the delta path
// kmeshd uses (model.State + dataplane.Update), then moves one pod to a
// new address per iteration and times push → the maps written (Update
// returned). Reported: p50/p99 of that, the first full sync (client start
// → maps written), the Go heap the client side keeps (heap after GC
// with the mesh synced, minus before the client started; the server's
// cache is in both), the process's CPU time over the first sync, and its RSS after the first sync and its
// peak (VmRSS, VmHWM: client and server together). Needs root:
//
//	go test -run '^$' -bench OneEndpointChangeAtScale -benchtime 200x -timeout 30m ./internal/source/xds/
//
// KMESH_BENCH_SYNCPROFILE=file writes a CPU profile of the first sync
// alone (client start to the maps written), KMESH_BENCH_CHANGEPROFILE=file
// one of the changes alone. KMESH_BENCH_HEAPPROFILE=file writes a heap profile with the mesh synced
// (go tool pprof -sample_index=inuse_space).
func BenchmarkWorkloadClient_OneEndpointChangeAtScale(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=%d", n, 10*n), func(b *testing.B) { benchScale(b, n) })
	}
}

func benchScale(b *testing.B, services int) {
	if os.Geteuid() != 0 {
		b.Skip("creating BPF maps needs root")
	}
	limits := bpf.DefaultLimits
	limits.Services, limits.Frontends = uint32(services+16), uint32(services+16)
	limits.Backends, limits.Endpoints = uint32(10*services+64), uint32(10*services+4096)
	maps, err := bpf.NewMaps(limits)
	if err != nil {
		b.Fatal(err)
	}
	defer maps.Close()
	dp, err := dataplane.New(dataplane.MapStore(maps), limits, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv := xdstest.StartPush(b)
	res := make(map[string]types.Resource, 11*services)
	for s := range services {
		name, svc := xdstest.Service("default", fmt.Sprintf("svc-%d", s), []string{fmt.Sprintf("10.%d.%d.%d", 96+s/65536, (s/256)%256, s%256)}, xdstest.Port{Service: 80, Target: 8080})
		res[name] = svc
		for i := range 10 {
			name, a := scaleWorkload(s, i).Address()
			res[name] = a
		}
	}
	if err := srv.Addresses.SetResources(res); err != nil {
		b.Fatal(err)
	}
	res = nil
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	sink := &deltaSink{dp: dp, written: make(chan time.Time, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	benchcpu.StartProfile(b)
	cpu0 := benchcpu.Used()
	start := time.Now()
	var firstSync time.Duration
	cfg := testConfig(srv.Addr())
	go NewWorkloadClient(cfg, nil).RunChanges(ctx, sink.apply, sink.update)
	select {
	case t := <-sink.written:
		firstSync = t.Sub(start)
	case <-time.After(5 * time.Minute):
		b.Fatal("no first sync in 5 minutes")
	}
	// CPU the process spent on the first sync (client, and the server
	// sending what it marshalled before start): on a loaded machine the
	// wall time above is mostly waiting for a core.
	syncCPU := benchcpu.Used() - cpu0
	pprof.StopCPUProfile() // a no-op unless KMESH_BENCH_SYNCPROFILE started it
	runtime.GC()
	if path := os.Getenv("KMESH_BENCH_HEAPPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heapMiB := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / (1 << 20)
	rssMiB, hwmMiB := procMemory(b)

	// cpus: the process's CPU time from each push to its change written:
	// a change slow in wall time but not in CPU waited for a core.
	var delays, cpus []time.Duration
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	benchcpu.StartChangeProfile(b)
	cpu0 = benchcpu.Used()
	for i := 0; b.Loop(); i++ {
		w := scaleWorkload(i%services, 3)
		w.IPs = []string{fmt.Sprintf("10.200.%d.%d", (i/250)%256, 1+i%250)}
		name, a := w.Address()
		t0, c0 := time.Now(), benchcpu.Used()
		if err := srv.Addresses.UpdateResource(name, a); err != nil {
			b.Fatal(err)
		}
		select {
		case t := <-sink.written:
			delays = append(delays, t.Sub(t0))
			cpus = append(cpus, benchcpu.Used()-c0)
		case <-time.After(eventTimeout):
			b.Fatalf("change %d not written after %v", i, eventTimeout)
		}
	}
	// CPU and allocation per change are the whole process's (the server's
	// push and the client's apply); GC cycles during the changes are the
	// tail a change can meet (a cycle marks the whole heap, the mesh and
	// the server's cache).
	cpuPer := (benchcpu.Used() - cpu0) / time.Duration(len(delays))
	pprof.StopCPUProfile() // a no-op unless KMESH_BENCH_CHANGEPROFILE started it
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	allocPer := (ms1.TotalAlloc - ms0.TotalAlloc) / uint64(len(delays))
	gcs := ms1.NumGC - ms0.NumGC
	slices.Sort(delays)
	slices.Sort(cpus)
	pct := func(p float64) time.Duration { return delays[min(len(delays)-1, int(p*float64(len(delays))))] }
	cpuPct := func(p float64) time.Duration { return cpus[min(len(cpus)-1, int(p*float64(len(cpus))))] }
	b.ReportMetric(float64(cpuPer.Microseconds()), "cpu-µs/change")
	b.ReportMetric(float64(allocPer), "alloc-B/change")
	b.ReportMetric(float64(pct(0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(pct(0.99).Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpuPct(0.99).Microseconds()), "cpu-p99-µs")
	// Reported after the loop: b.Loop's start deletes earlier metrics.
	b.ReportMetric(firstSync.Seconds(), "first-sync-s")
	b.ReportMetric(syncCPU.Seconds(), "first-sync-cpu-s")
	b.ReportMetric(heapMiB, "client-heap-MiB")
	b.ReportMetric(rssMiB, "proc-rss-MiB")
	b.ReportMetric(hwmMiB, "proc-peak-MiB")
	b.Logf("%d changes: p50 %v, p99 %v, max %v; CPU %v and %d KiB allocated per change (push to written: p50 %v, p99 %v, max %v), %d GC cycles during the changes (client and server); first sync %v (%v CPU); client heap %.0f MiB; process RSS %.0f MiB, peak %.0f MiB (client and server)",
		len(delays), pct(0.50), pct(0.99), delays[len(delays)-1], cpuPer, allocPer>>10, cpuPct(0.50), cpuPct(0.99), cpus[len(cpus)-1], gcs, firstSync, syncCPU.Round(time.Millisecond), heapMiB, rssMiB, hwmMiB)
}

// procMemory reads this process's resident set and its peak, in MiB.
func procMemory(b *testing.B) (rss, hwm float64) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		var kb float64
		if _, err := fmt.Sscanf(line, "VmRSS: %f kB", &kb); err == nil {
			rss = kb / 1024
		}
		if _, err := fmt.Sscanf(line, "VmHWM: %f kB", &kb); err == nil {
			hwm = kb / 1024
		}
	}
	return rss, hwm
}
