package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

// runIDRandom is how many random base-36 digits follow the PID in a run id.
const runIDRandom = 4

// buildDirPrefix starts the temporary directory Build puts binaries in; the
// PID follows, so Sweep can remove those of dead processes.
const buildDirPrefix = "kmesh-testbed-build-"

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// validName reports whether s is usable in netns, cgroup and bpffs names.
func validName(s string) bool { return nameRE.MatchString(s) }

// runPID returns the PID encoded in name, a run id with prefix, optionally
// followed by "-" and more.
func runPID(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0, false
	}
	id, _, _ := strings.Cut(rest, "-")
	if len(id) <= runIDRandom {
		return 0, false
	}
	pid, err := strconv.ParseInt(id[:len(id)-runIDRandom], 36, 32)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return int(pid), true
}

// alive reports whether a process with this PID runs. A zombie does not: a
// test binary killed by a signal stays one until `go test` reaps it. A
// recycled PID makes a leftover look alive; a later Sweep gets it.
func alive(pid int) bool {
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}

// Sweep removes leftovers of earlier runs with this prefix whose process (the
// PID in the run id) is gone: network namespaces in /var/run/netns, cgroup
// directories (after killing what still runs in them) and bpffs directories.
// It also removes Build's temporary directories of dead processes. Leftovers
// of live processes are kept. New calls Sweep, so an interrupted run is
// cleaned by the next one.
func Sweep(prefix string) error {
	stale := func(name string) bool {
		pid, ok := runPID(prefix, name)
		return ok && !alive(pid)
	}
	var errs []error

	// Namespaces first: processes left in them belong to stale cgroups too,
	// but removing the mount does not need them gone.
	names, err := readDirNames(netnsDir)
	errs = append(errs, err)
	for _, name := range names {
		if stale(name) {
			errs = append(errs, deleteNetns(filepath.Join(netnsDir, name)))
		}
	}

	if root, err := cgroupv2.Root(); err != nil {
		errs = append(errs, err)
	} else {
		names, err := readDirNames(root)
		errs = append(errs, err)
		for _, name := range names {
			if stale(name) {
				errs = append(errs, removeCgroup(filepath.Join(root, name)))
			}
		}
	}

	names, err = readDirNames(bpfRoot)
	errs = append(errs, err)
	for _, name := range names {
		if stale(name) {
			if err := os.RemoveAll(filepath.Join(bpfRoot, name)); err != nil {
				errs = append(errs, fmt.Errorf("remove bpffs dir: %w", err))
			}
		}
	}

	names, err = readDirNames(os.TempDir())
	errs = append(errs, err)
	for _, name := range names {
		rest, ok := strings.CutPrefix(name, buildDirPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidText); err == nil && pid > 0 && !alive(pid) {
			if err := os.RemoveAll(filepath.Join(os.TempDir(), name)); err != nil {
				errs = append(errs, fmt.Errorf("remove build dir: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// readDirNames lists dir; a missing dir is empty.
func readDirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep %s: %w", dir, err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}
