package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		live, scan, floor uint64
		base, want        int
	}{
		{2 << 20, 2 << 20, 64 << 20, 100, 3101},  // 2 MB live: goal 64 MB
		{2 << 20, 3 << 20, 64 << 20, 100, 2067},  // stacks and globals count too
		{40 << 20, 40 << 20, 64 << 20, 100, 100}, // 40 MB live: GOGC's 80 MB goal is above the floor
		{100 << 20, 100 << 20, 64 << 20, 50, 50}, // live above the floor: GOGC
		{0, 0, 64 << 20, 100, 100},               // nothing measured yet
		{32 << 20, 32 << 20, 64 << 20, 100, 101}, // exactly twice: just over
		{16 << 20, 16 << 20, 64 << 20, 400, 400}, // a higher GOGC is kept
	} {
		got := percent(tc.live, tc.scan, tc.floor, tc.base)
		if got != tc.want {
			t.Errorf("percent(%d, %d, %d, %d) = %d, want %d", tc.live, tc.scan, tc.floor, tc.base, got, tc.want)
		}
		if tc.live > 0 && tc.live < tc.floor && tc.live+tc.scan*uint64(got)/100 < tc.floor {
			t.Errorf("live %d scan %d with percent %d: goal below the floor %d", tc.live, tc.scan, got, tc.floor)
		}
	}
}

// TestStart_RaisesTheGoal: after a collection the runtime's own heap goal
// is at the floor, and stop gives the collector back its percent.
func TestStart_RaisesTheGoal(t *testing.T) {
	const floor = 256 << 20
	goal := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base < 0 {
		t.Skip("GOGC=off")
	}
	stop := Start(floor)
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the cleanup runs on its own goroutine
		runtime.GC()
		metrics.Read(goal)
		if goal[0].Value.Uint64() >= floor {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap goal %d after collections, want >= %d", goal[0].Value.Uint64(), uint64(floor))
		}
	}
	stop()
	if p := debug.SetGCPercent(base); p != base {
		t.Fatalf("GC percent after stop: %d, want %d", p, base)
	}
	runtime.GC()
	metrics.Read(goal)
	if goal[0].Value.Uint64() >= floor {
		t.Fatalf("heap goal %d after stop, still the floor", goal[0].Value.Uint64())
	}
}
