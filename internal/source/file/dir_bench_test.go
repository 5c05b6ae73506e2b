package file

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/benchcpu"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
)

// perFile is how many services a file of the benchmark holds, each with
// its 10 workloads (about 11 KB). Parsing costs about 20 µs per item here,
// so the file's size is most of a change's cost: a file of 100 services
// and 1,000 workloads took 80 ms at p50 under load.
const perFile = 10

// benchFile is file f of a directory mesh: perFile services, each
// selecting its 10 workloads. gen moves workload 3 of service k to a new
// address.
func benchFile(f, gen, k int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range perFile {
		s := f*perFile + i
		fmt.Fprintf(&b, "- {name: s-%d, addresses: [\"10.%d.%d.%d\"], ports: [{port: 80, targetPort: 8080}], selector: {app: s-%d}}\n",
			s, 96+s/65536, (s/256)%256, s%256, s)
	}
	b.WriteString("workloads:\n")
	for i := range perFile {
		s := f*perFile + i
		for j := range 10 {
			n := s*10 + j
			addr := fmt.Sprintf("10.%d.%d.%d", 128+n/65536, (n/256)%256, n%256)
			if i == k && j == 3 && gen > 0 {
				addr = fmt.Sprintf("10.250.%d.%d", (gen/250)%256, 1+gen%250)
			}
			fmt.Fprintf(&b, "- {name: w-%d, labels: {app: s-%d}, addresses: [\"%s\"], node: remote}\n", n, s, addr)
		}
	}
	return b.String()
}

// BenchmarkDirSource_OneEndpointChange: a directory of files of perFile
// services / 10 x perFile workloads each (10k / 100k and 50k / 500k in all),
// kmeshd's path into real BPF maps (model.State, dataplane.Update); each
// iteration rewrites one file (rename over it) with one workload moved,
// and times the rename -> the maps written, through the watcher and its
// debounce. Needs root:
//
//	go test -run '^$' -bench DirSource_OneEndpointChange -benchtime 200x -timeout 30m ./internal/source/file/
//
// KMESH_BENCH_SYNCPROFILE=file writes a CPU profile of the first sync
// (Load, Apply, the State) alone, KMESH_BENCH_CHANGEPROFILE=file one of
// the changes alone.
func BenchmarkDirSource_OneEndpointChange(b *testing.B) {
	for _, services := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=%d", services, 10*services), func(b *testing.B) { benchDir(b, services/perFile) })
	}
}

func benchDir(b *testing.B, files int) {
	if os.Geteuid() != 0 {
		b.Skip("creating BPF maps needs root")
	}
	services := files * perFile
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
	path := b.TempDir()
	for f := range files {
		if err := os.WriteFile(filepath.Join(path, fmt.Sprintf("part-%04d.yaml", f)), []byte(benchFile(f, 0, 0)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	src := New(path, "", nil)
	benchcpu.StartProfile(b)
	cpu0 := benchcpu.Used()
	start := time.Now()
	m, err := src.Load()
	if err != nil {
		b.Fatal(err)
	}
	if err := dp.Apply(m); err != nil {
		b.Fatal(err)
	}
	st := model.NewState()
	st.Apply(st.DiffMesh(m))
	firstSync, syncCPU := time.Since(start), benchcpu.Used()-cpu0
	pprof.StopCPUProfile() // a no-op unless KMESH_BENCH_SYNCPROFILE started it
	m = nil

	var mu sync.Mutex
	written := make(chan time.Time, 1)
	update := func(c *model.Changes) error {
		mu.Lock()
		defer mu.Unlock()
		if err := st.Check(c); err != nil {
			return err
		}
		undo := st.Apply(c)
		if err := dp.Update(c, st); err != nil {
			st.Apply(undo)
			return err
		}
		written <- time.Now()
		return nil
	}
	apply := func(m *model.Mesh) error { return update(st.DiffMesh(m)) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.RunChanges(ctx, apply, update) }()
	defer func() { cancel(); <-done }()
	time.Sleep(200 * time.Millisecond) // the watch is set up

	var delays []time.Duration
	benchcpu.StartChangeProfile(b)
	cpu0, gc0 := benchcpu.Used(), gcCount()
	for i := 0; b.Loop(); i++ {
		f, k := i%files, (i/files)%perFile
		name := filepath.Join(path, fmt.Sprintf("part-%04d.yaml", f))
		tmp := filepath.Join(path, ".tmp")
		if err := os.WriteFile(tmp, []byte(benchFile(f, i+1, k)), 0o644); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := os.Rename(tmp, name); err != nil {
			b.Fatal(err)
		}
		select {
		case t := <-written:
			delays = append(delays, t.Sub(t0))
		case <-time.After(30 * time.Second):
			b.Fatalf("change %d not written after 30s", i)
		}
		// The file's next version puts this workload back.
		if err := os.WriteFile(tmp, []byte(benchFile(f, 0, 0)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, name); err != nil {
			b.Fatal(err)
		}
		select {
		case <-written:
		case <-time.After(30 * time.Second):
			b.Fatalf("change %d not undone after 30s", i)
		}
	}
	// Each iteration is two file syncs (the change and its undo); the CPU
	// is the whole process's (source, state, dataplane, the benchmark's
	// own file writes, GC).
	cpuPer := (benchcpu.Used() - cpu0) / time.Duration(2*len(delays))
	pprof.StopCPUProfile() // a no-op unless KMESH_BENCH_CHANGEPROFILE started it
	gcs := gcCount() - gc0
	slices.Sort(delays)
	pct := func(p float64) time.Duration { return delays[min(len(delays)-1, int(p*float64(len(delays))))] }
	b.ReportMetric(float64(cpuPer.Microseconds()), "cpu-µs/sync")
	b.ReportMetric(float64(pct(0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(pct(0.99).Microseconds()), "p99-µs")
	b.ReportMetric(firstSync.Seconds(), "first-sync-s")
	b.ReportMetric(syncCPU.Seconds(), "first-sync-cpu-s")
	b.Logf("%d changes: p50 %v, p99 %v, max %v (debounce %v included); CPU %v per file sync, %d GC cycles during the changes; first sync (parse every file + full write) %v (%v CPU)",
		len(delays), pct(0.50), pct(0.99), delays[len(delays)-1], debounce, cpuPer, gcs, firstSync, syncCPU.Round(time.Millisecond))
}

func gcCount() uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.NumGC
}
