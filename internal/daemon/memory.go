package daemon

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"time"
)

// steadyGCPercent is the Go GC's target once the first config is applied,
// unless GOGC is set. kmeshd then holds a large, long-lived heap (the
// model, the sources' indexes, the dataplane's records: ~110 MB at 100,000
// endpoints) and allocates little per change, so the default 100 (collect
// when the heap has doubled) would let the resident set grow to twice what
// is live for no gain. At 25 a collection comes after a quarter of the
// live heap is allocated again: every few thousand endpoint changes (a
// change allocates kilobytes), a few times per whole rebuild (a policy
// change in a directory config, an xDS reconnect), and the resident set
// stays within a quarter of the live heap instead of a half (at 50 it was
// ~55 MB above the live heap at 100,000 endpoints, a quarter of the
// budget).
const steadyGCPercent = 25

// startupGCPercent is the Go GC's target from kmeshd's start until the
// first sync is settled (settleMemory), unless GOGC is set. A first sync
// builds the mesh from nothing: the live heap grows the whole time, and
// at the default 100 each collection marked all that was built so far (at
// 500,000 endpoints the last one before the apply ended marked 700 MB),
// while the first sync's garbage is collected by settleMemory anyway. At
// 200 the heap may grow to three times what the last collection left
// instead of twice, so fewer collections: kmeshd's CPU to ready, directory
// config, 10,000 services / 100,000 endpoints 1960/2210 -> 1490/1720 ms
// (xDS 2660/2270 -> 1910/2020), 50,000 / 500,000 14130/14240 ->
// 12940/13130 ms. The price is the peak before settleMemory: 246/248 ->
// 275/269 MiB at 10,000 (xDS 267/264 -> 335/329), 1096/1144 -> 1225/1207
// MiB at 50,000 (xDS, one run: 1231 -> 1554). The steady state is
// settleMemory's, as before.
const startupGCPercent = 200

// startupMemory sets the GC's target for the first sync.
func startupMemory() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(startupGCPercent)
	}
}

// settleMemory runs once the first config is in the maps, before kmeshd
// says it is ready: the first sync's garbage (decoded responses, the
// whole-mesh build, the first translation: as much again as what stays)
// is returned to the kernel at once instead of over minutes by the
// scavenger, and the GC target is lowered for the steady state. It logs
// the heap before and after. It is part of the first sync's time, not of
// the first changes': with the lower target the heap is over its goal,
// so a collection would otherwise start with the first change's
// allocation and mark the whole heap while changes wait.
//
// One collection (FreeOSMemory's). A second one after the release used to
// mark the live heap again, because on the bench machine of the time (a
// paravirtualized, shadow-paged MMU) the first change after the release
// was 10-20x slower than the next ones. On today's machine it is not:
// kmesh-bench -skip-dataplane -skip-istiod without it vs with it (load
// ~5, 10k/100k and 50k/500k): the first xDS change 1.9 / 0.8 ms vs 0.8 /
// 1.2 ms, p99 1.91 / 1.87 ms vs 3.57 / 7.21 ms; the first directory change
// 27.5 / 25.5 ms vs 24.2 / 23.0 ms, p99 34 / 80 ms vs 34 / 93 ms (the 50k
// outliers are single late changes in both); steady RSS the same. It cost
// the first sync a mark of the whole live heap before ready: in those
// runs startup_cpu_ms.settle went 172-195 -> 71-117 ms at 10k, 2026 / 2133
// -> 747 / 749 ms at 50k (directory / xDS; ~600 MB live).
func settleMemory(log *slog.Logger) {
	start := time.Now()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(steadyGCPercent)
	}
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	log.Info("memory after the first sync", "heap_live_mib", after.HeapAlloc>>20,
		"heap_released_mib", (after.HeapReleased-min(before.HeapReleased, after.HeapReleased))>>20,
		"took", time.Since(start).Round(time.Millisecond))
}
