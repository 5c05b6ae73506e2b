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
// A second collection after the release marks the live heap again: the
// release (madvise of every free range, thousands of them) left the first
// change after ready 10-20x slower inside kmeshd than the next ones (14-18
// ms in the xDS index's delta for 40 map lookups at 100,000 endpoints,
// with no page fault: on the bench machine's paravirtualized, shadow-paged
// MMU the live pages are slow to reach again after it), and a collection
// reaches every live object with pointers once, before ready, instead of
// the first changes each paying for the pages they touch.
func settleMemory(log *slog.Logger) {
	start := time.Now()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(steadyGCPercent)
	}
	debug.FreeOSMemory()
	runtime.GC()
	runtime.ReadMemStats(&after)
	log.Info("memory after the first sync", "heap_live_mib", after.HeapAlloc>>20,
		"heap_released_mib", (after.HeapReleased-min(before.HeapReleased, after.HeapReleased))>>20,
		"took", time.Since(start).Round(time.Millisecond))
}
