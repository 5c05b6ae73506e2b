// Package testbed builds multi-node meshes on one kernel out of network
// namespaces, veth pairs and cgroups, and runs real processes in them. The
// end-to-end tests, the demo and the benchmarks use it (DESIGN.md §3, §8).
//
// A Bed holds one underlay network namespace with a bridge; each Node is a
// network namespace plugged into that bridge, routing for its pods, with its
// own cgroup v2 directory (where that node's kmeshd attaches its programs) and
// its own bpffs pin directory. Each Pod is a network namespace with one veth
// into its node's bridge. Nothing is created in the root network namespace.
//
// Every name a Bed creates starts with its run id (Bed.RunID), which encodes
// the PID of the creating process, so Sweep can tell leftovers of a crashed
// run from those of a live one. Close removes everything and is safe to call
// more than once; tests get that for free from NewT.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package testbed

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

// DefaultPrefix starts the run id of a Bed whose Options.Prefix is empty.
const DefaultPrefix = "kmtb"

const (
	netnsDir = "/var/run/netns" // where `ip netns` looks, so config files can name them
	bpfRoot  = "/sys/fs/bpf"
)

// Options configure New.
type Options struct {
	// Prefix starts every name the Bed creates; DefaultPrefix if empty.
	Prefix string
	// Log receives the stderr of every process the Bed starts, line by line,
	// prefixed with the process name. May be nil.
	Log io.Writer
}

// Bed is one test topology; Close removes all of it.
type Bed struct {
	runID      string
	cgroupRoot string
	cgroup     string // processes started with StartRoot live here
	underlay   string // netns path
	log        io.Writer
	logMu      sync.Mutex

	mu      sync.Mutex // guards everything below; held for whole topology changes
	closed  bool
	nodes   []*Node
	pods    map[string]*Pod
	procs   []*Process
	netns   []string // paths, in creation order
	cgroups []string
	bpfDirs []string
	links   int // counter for node-side interface names

	closeOnce sync.Once
	closeErr  error
}

// New builds an empty Bed: the underlay namespace with its bridge and a
// cgroup for processes started with StartRoot. It first sweeps leftovers of
// dead earlier runs with the same prefix.
func New(opts Options) (*Bed, error) {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !validName(prefix) {
		return nil, fmt.Errorf("prefix %q: want lower case letters, digits and dashes", prefix)
	}
	if err := Sweep(prefix); err != nil && opts.Log != nil {
		// A stale leftover we cannot remove is no reason to refuse a new run:
		// names of this run cannot collide with it.
		fmt.Fprintf(opts.Log, "testbed: sweep: %v\n", err)
	}
	root, err := cgroupv2.Root()
	if err != nil {
		return nil, err
	}
	b := &Bed{cgroupRoot: root, log: opts.Log, pods: map[string]*Pod{}}
	for {
		b.runID = newRunID(prefix, os.Getpid())
		// A clash needs the same PID and random suffix; cheap to rule out.
		if !exists(filepath.Join(netnsDir, b.runID+"-ul")) && !exists(filepath.Join(root, b.runID)) {
			break
		}
	}
	if err := b.setup(); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	return b, nil
}

func (b *Bed) setup() error {
	b.cgroup = filepath.Join(b.cgroupRoot, b.runID)
	if err := os.Mkdir(b.cgroup, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	b.cgroups = append(b.cgroups, b.cgroup)

	b.underlay = filepath.Join(netnsDir, b.runID+"-ul")
	if err := createNetns(b.underlay); err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	b.netns = append(b.netns, b.underlay)
	err := withHandle(b.underlay, func(h *netlinkHandle) error {
		if err := setLinkUp(h, "lo"); err != nil {
			return err
		}
		_, err := addBridge(h, underlayBridge, bridgeMAC(0))
		return err
	})
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	return nil
}

// UnderlayNetns returns the path of the underlay's network namespace, whose
// bridge joins the nodes: where a capture sees all traffic between nodes.
func (b *Bed) UnderlayNetns() string { return b.underlay }

// RunID returns the id that starts every name this Bed creates, such as
// "kmtb-1a2b3c": the prefix, then the creating PID in base 36 and a random
// suffix.
func (b *Bed) RunID() string { return b.runID }

// Close stops every process the Bed started (SIGTERM, SIGKILL after 3s), then
// deletes the pod, node and underlay namespaces, the cgroups (killing what is
// still in them, such as children of the stopped processes) and the bpffs
// directories. It keeps going past errors and returns them all. Later calls
// return the result of the first.
func (b *Bed) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.close() })
	return b.closeErr
}

func (b *Bed) close() error {
	b.mu.Lock()
	b.closed = true
	procs, nsPaths, cgroups, bpfDirs := b.procs, b.netns, b.cgroups, b.bpfDirs
	b.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.terminate() })
	}
	wg.Wait()

	var errs []error
	// Reverse creation order: pods before their node, nodes before the underlay.
	for i := len(nsPaths) - 1; i >= 0; i-- {
		if err := deleteNetns(nsPaths[i]); err != nil {
			errs = append(errs, err)
		}
	}
	// Only now: a cgroup cannot be removed while it holds a process.
	for i := len(cgroups) - 1; i >= 0; i-- {
		if err := removeCgroup(cgroups[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range bpfDirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove bpffs dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

var errClosed = errors.New("test bed closed")

// logLine copies one line of a process's stderr to Options.Log.
func (b *Bed) logLine(label, line string) {
	if b.log == nil {
		return
	}
	b.logMu.Lock()
	defer b.logMu.Unlock()
	fmt.Fprintf(b.log, "%s: %s\n", label, line)
}

func newRunID(prefix string, pid int) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	suffix := make([]byte, runIDRandom)
	for i := range suffix {
		suffix[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return prefix + "-" + strconv.FormatInt(int64(pid), 36) + string(suffix)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
