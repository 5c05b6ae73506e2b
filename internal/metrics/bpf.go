package metrics

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// EnableProgramStats turns on the kernel's run-time statistics of BPF
// programs (run count and run time, as with sysctl kernel.bpf_stats_enabled=1)
// for as long as the returned Closer stays open. It needs Linux 5.8 and
// CAP_SYS_ADMIN. The statistics cost a little on every program run, which is
// why the kernel keeps them off by default.
func EnableProgramStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	return c, nil
}

// linkPinPrefix is how internal/bpf names a program's link pin: link_<program>.
const linkPinPrefix = "link_"

// PinnedPrograms returns a Sources.Programs that reads, at each scrape, the
// run statistics of the programs behind the links pinned in dir, the bpffs
// directory of one kmeshd instance. Reading through the pins, rather than the
// daemon's own handles, counts the program that is attached now, even after
// an upgrade swapped it.
func PinnedPrograms(dir string) func() ([]ProgramStat, error) {
	return func() ([]ProgramStat, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("bpf dir %s: %w", dir, err)
		}
		var out []ProgramStat
		for _, e := range entries {
			name, ok := strings.CutPrefix(e.Name(), linkPinPrefix)
			if !ok {
				continue
			}
			s, err := pinnedProgramStats(filepath.Join(dir, e.Name()))
			if err != nil {
				return out, fmt.Errorf("program %s: %w", name, err)
			}
			s.Name = name
			out = append(out, s)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out, nil
	}
}

func pinnedProgramStats(pin string) (ProgramStat, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return ProgramStat{}, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return ProgramStat{}, err
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return ProgramStat{}, fmt.Errorf("program id %d: %w", info.Program, err)
	}
	defer prog.Close()
	st, err := prog.Stats()
	if err != nil {
		return ProgramStat{}, err
	}
	return ProgramStat{RunCount: st.RunCount, RunTime: st.Runtime.Seconds()}, nil
}
