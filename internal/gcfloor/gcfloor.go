// Package gcfloor keeps the Go garbage collector's heap goal at or above a
// floor: a process whose live heap is small (a proxy's few MB) otherwise
// collects every 4 MB of allocation, and at thousands of requests a second
// the collections' fixed costs become a measurable part of each request.
// Above the floor the collector works as GOGC says.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Start keeps the heap goal at least floor bytes, from the first
// collection on: after each one it sets the GC percent so that the live
// heap times (1 + percent/100) reaches floor, never lower than the percent
// in force when Start is called (GOGC, 100 by default). GOGC=off stays
// off. stop ends the tuning and restores that percent.
func Start(floor uint64) (stop func()) {
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base < 0 || floor == 0 {
		return func() {}
	}
	t := &tuner{floor: floor, base: base, pct: base, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}}
	t.arm()
	return func() {
		t.stopped.Store(true)
		debug.SetGCPercent(base)
	}
}

type tuner struct {
	floor   uint64
	base    int
	pct     int
	sample  []metrics.Sample
	stopped atomic.Bool
}

// sentinel is garbage from the moment it is made: its cleanup runs after
// the next collection, tunes and makes the next one. It is large enough
// not to share a tiny allocation block (whose cleanups may never run).
type sentinel struct {
	_ [64]byte
	p *int
}

func (t *tuner) arm() {
	runtime.AddCleanup(new(sentinel), func(t *tuner) {
		if t.stopped.Load() {
			return
		}
		t.tune()
		t.arm()
	}, t)
}

// percent is the GC percent that puts the heap goal at floor or above:
// the runtime's goal is live + (live + stacks + globals) * percent / 100,
// scan the sum in parentheses.
func percent(live, scan, floor uint64, base int) int {
	if live == 0 || scan == 0 || live >= floor {
		return base
	}
	p := int((floor - live) * 100 / scan)
	return max(p+1, base)
}

func (t *tuner) tune() {
	metrics.Read(t.sample)
	var v [3]uint64
	for i, s := range t.sample {
		if s.Value.Kind() != metrics.KindUint64 {
			return // not in this runtime
		}
		v[i] = s.Value.Uint64()
	}
	if p := percent(v[0], v[0]+v[1]+v[2], t.floor, t.base); p != t.pct {
		t.pct = p
		debug.SetGCPercent(p)
	}
}
