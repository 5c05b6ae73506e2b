package daemon

import (
	"log/slog"
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
}

func (s startup) attr() slog.Attr {
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	return slog.Group("startup_ms", "total", ms(s.total), "bpf_open", ms(s.open), "config", ms(s.config),
		"apply", ms(s.apply), "commit", ms(s.commit), "settle", ms(s.settle))
}
