package daemon

import (
	"log/slog"
	"syscall"
	"time"
)

// startup is where the time from Run to ready went, for the "kmeshd
// ready" line: a first sync that is slow says which part to look at. The
// programs load (open) while the config is read or the control plane's
// first push is received and built (config, counted from Run's start), so
// those two overlap; apply, commit and settle follow one another. bpf.Open
// logs its own split (maps created, programs loaded).
type startup struct {
	open   time.Duration // bpf.Open: maps reused or created, programs loaded
	config time.Duration // Run's start to the first mesh in hand
	apply  time.Duration // the first mesh into the maps
	commit time.Duration // pins and programs swapped in
	settle time.Duration // settleMemory
	total  time.Duration // Run's start to ready

	// The process's CPU time (every thread: the GC's, the sources'
	// goroutines beside the apply) at the start of the process and at
	// the end of config, apply and settle: on a machine busy with other
	// work the wall times above count the waits for a core.
	cpu struct{ config, apply, settle time.Duration }
}

func (s startup) attr() slog.Attr {
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	return slog.Group("startup_ms", "total", ms(s.total), "bpf_open", ms(s.open), "config", ms(s.config),
		"apply", ms(s.apply), "commit", ms(s.commit), "settle", ms(s.settle))
}

// cpuAttr is the CPU time of each part; settle's counts commit's.
func (s startup) cpuAttr() slog.Attr {
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	return slog.Group("startup_cpu_ms", "total", ms(s.cpu.settle), "config", ms(s.cpu.config),
		"apply", ms(s.cpu.apply-s.cpu.config), "settle", ms(s.cpu.settle-s.cpu.apply))
}

// processCPU is the CPU time the process has used so far, every thread's
// (0 if the kernel does not say).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
