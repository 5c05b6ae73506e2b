// Package benchcpu measures what a benchmark costs in CPU: on a loaded
// machine its wall time is mostly waiting for a core, so the process's CPU
// time is the steadier figure, and a CPU profile shows where it went.
package benchcpu

import (
	"os"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"
)

// ProfileEnv names the file a benchmark's CPU profile goes to, when set.
const ProfileEnv = "KMESH_BENCH_SYNCPROFILE"

// Used is the CPU this process has used so far, user and system.
func Used() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ChangeProfileEnv names the file the CPU profile of a benchmark's change
// loop alone goes to, when set (the first sync would swamp it otherwise).
const ChangeProfileEnv = "KMESH_BENCH_CHANGEPROFILE"

// StartProfile starts a CPU profile into $KMESH_BENCH_SYNCPROFILE when it
// is set; pprof.StopCPUProfile ends it (a no-op otherwise).
func StartProfile(tb testing.TB) { startProfile(tb, ProfileEnv) }

// StartChangeProfile starts a CPU profile into $KMESH_BENCH_CHANGEPROFILE
// when it is set; pprof.StopCPUProfile ends it (a no-op otherwise).
func StartChangeProfile(tb testing.TB) { startProfile(tb, ChangeProfileEnv) }

func startProfile(tb testing.TB, env string) {
	path := os.Getenv(env)
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	if err := pprof.StartCPUProfile(f); err != nil {
		tb.Fatal(err)
	}
}
