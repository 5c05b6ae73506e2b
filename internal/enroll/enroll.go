// Package enroll puts workloads in the mesh: a workload is enrolled when the
// cookie of its network namespace is in the km_manage map, and the programs
// balance only sockets of enrolled namespaces.
package enroll

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// Cookie returns the kernel's cookie of the network namespace at path (a
// netns file such as /var/run/netns/NAME or /proc/PID/ns/net): the value
// bpf_get_netns_cookie() returns for its sockets. A socket opened inside the
// namespace reads it with SO_NETNS_COOKIE. A path that is not a network
// namespace fails with ErrNotNetns, without blocking (see openNetns).
func Cookie(path string) (uint64, error) {
	target, err := openNetns(path)
	if err != nil {
		return 0, err
	}
	defer target.Close()
	return cookieOf(path, target)
}

// cookieOf reads the cookie of the namespace open as target.
func cookieOf(path string, target *os.File) (uint64, error) {
	// The namespace switch applies to this OS thread only. If switching
	// back fails the thread stays locked, and Go discards it on return.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("netns of this thread: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(netns.NsHandle(target.Fd())); err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("netns %s: enter: %w", path, err)
	}
	fd, sockErr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err := netns.Set(orig); err != nil {
		if sockErr == nil {
			unix.Close(fd)
		}
		return 0, fmt.Errorf("netns %s: return to own netns: %w", path, err)
	}
	runtime.UnlockOSThread()
	if sockErr != nil {
		return 0, fmt.Errorf("netns %s: socket: %w", path, sockErr)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns %s: read cookie: %w", path, err)
	}
	return cookie, nil
}

// Enroller keeps km_manage equal to a set of network namespaces.
type Enroller struct {
	m   *ebpf.Map
	log *slog.Logger

	mu       sync.Mutex
	enrolled map[uint64]string // cookie -> netns path
	byPath   map[string]uint64 // every path of the last Sync -> its cookie
	synced   bool
	reads    int // cookies read from namespaces (setns), for tests and logs
}

// New returns an Enroller for the manage map. Entries a previous kmeshd
// left there stay until the first Sync.
func New(m *ebpf.Map, log *slog.Logger) *Enroller {
	return &Enroller{m: m, log: log, enrolled: map[uint64]string{}}
}

// Sync enrolls every namespace in paths and in pinned, and un-enrolls every
// other one, including those a previous kmeshd left in the map. Cookies of
// paths are read anew each time, since a path may now name a new
// namespace; pinned are namespaces already known by cookie (a cookie is
// never reused while the kernel runs), with the path they were named by. A
// namespace that cannot be read is reported and skipped; the others still
// apply.
func (e *Enroller) Sync(paths []string, pinned map[uint64]string) error {
	return e.sync(paths, pinned, true)
}

// Change is Sync for a set of paths that changed by a few: only the
// cookies of paths the last Sync or Change did not read are read; a path
// read before keeps its cookie, and one no longer given is dropped. So a
// change that adds or removes a path costs that path, not a setns into
// every enrolled namespace. Sources that report a path anew (a pod's
// namespace replaced) go through Sync.
func (e *Enroller) Change(paths []string, pinned map[uint64]string) error {
	return e.sync(paths, pinned, false)
}

// Reads returns how many namespace cookies the enroller has read (one
// setns each).
func (e *Enroller) Reads() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reads
}

func (e *Enroller) sync(paths []string, pinned map[uint64]string, reread bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	want := make(map[uint64]string, len(paths)+len(pinned))
	for c, p := range pinned {
		want[c] = p
	}
	var errs []error
	byPath := make(map[string]uint64, len(paths)+len(pinned))
	for c, p := range pinned {
		byPath[p] = c
	}
	for _, p := range paths {
		if c, ok := e.byPath[p]; ok && !reread {
			want[c] = p
			byPath[p] = c
			continue
		}
		e.reads++
		c, err := Cookie(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want[c] = p
		byPath[p] = c
	}
	e.byPath = byPath
	for c, p := range want {
		if _, ok := e.enrolled[c]; ok {
			continue
		}
		if err := e.m.Put(bpf.KmeshManageKey{NetnsCookie: c}, bpf.KmeshManageValue{}); err != nil {
			errs = append(errs, fmt.Errorf("netns %s: enroll: %w", p, err))
			continue
		}
		e.enrolled[c] = p
		e.log.Debug("enrolled", "netns", p, "cookie", c)
	}
	for c, p := range e.enrolled {
		if _, ok := want[c]; ok {
			continue
		}
		if err := e.m.Delete(bpf.KmeshManageKey{NetnsCookie: c}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("netns %s: unenroll: %w", p, err))
			continue
		}
		delete(e.enrolled, c)
		e.log.Debug("unenrolled", "netns", p, "cookie", c)
	}
	if !e.synced {
		if err := e.sweep(want); err != nil {
			errs = append(errs, err)
		} else {
			e.synced = true
		}
	}
	return errors.Join(errs...)
}

// sweep removes the entries of namespaces no longer wanted that a previous
// kmeshd enrolled.
func (e *Enroller) sweep(want map[uint64]string) error {
	var k bpf.KmeshManageKey
	var v bpf.KmeshManageValue
	var stale []uint64
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k.NetnsCookie]; !ok {
			stale = append(stale, k.NetnsCookie)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmManage, err)
	}
	for _, c := range stale {
		if err := e.m.Delete(bpf.KmeshManageKey{NetnsCookie: c}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unenroll cookie %d: %w", c, err)
		}
	}
	return nil
}

// Enrolled returns the enrolled namespace paths, sorted.
func (e *Enroller) Enrolled() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.enrolled))
	for _, p := range e.enrolled {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Cookies returns the cookie of each enrolled namespace, by path.
func (e *Enroller) Cookies() map[string]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]uint64, len(e.enrolled))
	for c, p := range e.enrolled {
		out[p] = c
	}
	return out
}

// Paths returns the cookie of every path the last Sync read, including
// other paths to a namespace that Cookies names by one of them.
func (e *Enroller) Paths() map[string]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.byPath)
}

// Entries counts km_manage's entries for the map metrics. The enroller is
// the map's only writer, so after its first sync the count is its own;
// before, a previous instance's entries are still there and are walked
// (at most --max-workloads keys).
func (e *Enroller) Entries() (n int, capacity uint32, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.synced {
		return len(e.enrolled), e.m.MaxEntries(), nil
	}
	var k bpf.KmeshManageKey
	var v bpf.KmeshManageValue
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, e.m.MaxEntries(), it.Err()
}
