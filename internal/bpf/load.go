// Package bpf loads Kmesh's eBPF programs into the kernel, pins their maps
// and links under the daemon's bpffs directory, attaches them to a cgroup,
// and removes all of it on request. The Go twins of the C map types
// (KmeshFrontendKey, ...) are generated here by bpf2go from bpf/include/types.h.
//
// Everything lives under one directory per kmeshd instance, so several
// instances share a kernel. The pins outlive the daemon: a restarted or
// upgraded daemon re-opens the maps it finds there, fills the maps it had to
// create, and only then swaps its programs behind the pinned links, so no
// connect() ever meets a program whose maps are not ready.
package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Limits are the capacities of the maps, fixed when a map is created.
type Limits struct {
	Services  uint32 // km_service entries (and service ids 1..Services)
	Frontends uint32 // km_frontend: service address:port pairs
	Endpoints uint32 // km_endpoint: endpoint slots, counting weight and both generations in flight
	Backends  uint32 // km_backend: workloads with addresses
	Workloads uint32 // km_manage, km_authz_netns: enrolled network namespaces
	Sockets   uint32 // km_socks: sockets of this node same-node acceleration tracks

	// Authorization (bpf/include/authz.h). Like the hash maps above, these
	// are not preallocated: only what a config uses takes memory.
	Policies          uint32 // km_authz_pol, km_authz_stats: policies (ids 1..Policies)
	PolicyMatches     uint32 // km_authz_match: matches of all policies (a changing policy briefly needs two copies)
	PolicyValues      uint32 // km_authz_val: identities and ports the matches test
	PolicyIPBlocks    uint32 // km_authz_ip: address blocks the matches test, plus one per match that tests addresses
	PolicyRefs        uint32 // km_authz_list: policies in the lists that apply to workloads
	WorkloadAddresses uint32 // km_authz_addr: addresses of the mesh's workloads, when it has policies

	// AffinityClients bounds km_lb_affinity, the (service, client) pairs
	// of ClientIP session affinity; the least recently used go first.
	AffinityClients uint32
}

// DefaultLimits fit 10,000 services with 100,000 endpoints, and 4,096
// policies.
var DefaultLimits = Limits{
	Services:  16384,
	Frontends: 65536,
	Endpoints: 262144,
	Backends:  131072,
	Workloads: 4096,
	Sockets:   65536,

	Policies:          4096,
	PolicyMatches:     65536,
	PolicyValues:      262144,
	PolicyIPBlocks:    65536,
	PolicyRefs:        65536,
	WorkloadAddresses: 262144,

	AffinityClients: 65536,
}

// Options say where the data plane lives.
type Options struct {
	Dir    string // bpffs directory of this instance
	Cgroup string // cgroup v2 directory the programs attach to
	Limits Limits
	// Accelerate moves data between enrolled sockets of this node socket
	// to socket (sockops + sk_msg), skipping TCP/IP.
	Accelerate bool
	// Telemetry records every connection of an enrolled workload.
	Telemetry bool
	// Features, when set, edits what the kernel probe found before the
	// programs are configured: tests simulate an older kernel with it
	// (say, without bpf_loop). Nil in kmeshd; no flag sets it.
	Features func(Features) Features
}

// Datapath is the loaded data plane: its maps, and (after Commit) the links
// that keep the programs attached.
type Datapath struct {
	KmeshMaps
	programs map[string]*ebpf.Program // by name; optional ones may be absent
	features Features
	opts     Options
	log      *slog.Logger
	fresh    map[string]*ebpf.Map // maps created by Open, pinned by Commit
	links    []link.Link
	// Reused is true when Open found this instance's maps pinned: a
	// previous kmeshd's data plane is in force.
	Reused bool
	// lock is the instance lock of opts.Dir (lockDir), released by Close.
	lock *os.File
	// created are the directories Open made for opts.Dir, deepest first:
	// Discard removes them.
	created []string
}

// AuthzEnforced reports whether the programs enforce authorization
// policies: false on a kernel without bpf_loop in cgroup programs (5.17),
// where kmeshd must not report ready while the mesh has policies.
func (d *Datapath) AuthzEnforced() bool { return d.features.Authz }

// NoAuthzReason says why policies are not enforced when AuthzEnforced is
// false.
const NoAuthzReason = "the kernel lacks bpf_loop in cgroup programs (5.17)"

// Open loads the programs with this instance's maps: a map pinned in
// opts.Dir is reused, with its entries, when this build's layout and size
// match it and every map of its set (mapSets) can be reused too; the others
// are created afresh (a log line says which, and why). Nothing is attached
// and nothing new is pinned: Commit does that once the caller has filled
// the maps.
func Open(opts Options, log *slog.Logger) (*Datapath, error) {
	feats, err := probe()
	if err != nil {
		return nil, err
	}
	if opts.Features != nil {
		feats = opts.Features(feats)
	}
	if err := ensureFS(opts.Dir); err != nil {
		return nil, err
	}
	created := missingDirs(opts.Dir)
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("bpf dir %s: %w", opts.Dir, err)
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
			removeDirs(created)
		}
	}()
	s, err := spec(opts.Limits)
	if err != nil {
		return nil, err
	}
	if err := feats.configure(s, opts, log); err != nil {
		return nil, err
	}

	d := &Datapath{features: feats, opts: opts, log: log, fresh: map[string]*ebpf.Map{}, lock: lock, created: created}
	mapsStart := time.Now()
	replacements, err := openMaps(opts.Dir, s, log)
	if err != nil {
		return nil, err
	}
	mapsTook := time.Since(mapsStart)
	for name, r := range replacements {
		if r.reused {
			d.Reused = true
		} else {
			d.fresh[name] = r.m
		}
	}
	maps := map[string]*ebpf.Map{}
	for name, r := range replacements {
		maps[name] = r.m
	}
	progStart := time.Now()
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{MapReplacements: maps})
	// The collection took references of its own; the fresh maps' handles
	// stay open until Commit pins them.
	for name, m := range maps {
		if d.fresh[name] == nil {
			m.Close()
		}
	}
	if err != nil {
		closeAll(d.fresh)
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if err := coll.Assign(&d.KmeshMaps); err != nil {
		coll.Close()
		closeAll(d.fresh)
		return nil, fmt.Errorf("load programs: %w", err)
	}
	d.programs = coll.Programs
	coll.Programs = nil // now ours to close
	coll.Close()
	ok = true // the lock is d's now
	log.Info("programs loaded", "maps_created", len(d.fresh), "maps_reused", len(replacements)-len(d.fresh),
		"maps_ms", mapsTook.Milliseconds(), "programs_ms", time.Since(progStart).Milliseconds())
	return d, nil
}

// Commit pins the maps Open created, replacing older pins of the same name,
// and attaches every program through a pinned link: an existing link gets
// the new program with link.Update, atomically for connections.
func (d *Datapath) Commit() error {
	carries := d.carries()
	defer func() {
		for _, c := range carries {
			c.close()
		}
	}()
	d.carry(carries, true)
	for name, m := range d.fresh {
		path := filepath.Join(d.opts.Dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("map %s: replace pin %s: %w", name, path, err)
		}
		if err := m.Pin(path); err != nil {
			return fmt.Errorf("map %s: pin %s: %w", name, path, err)
		}
	}
	// Programs another process runs (the tunnel's outlier credit) are
	// pinned by name, replacing the previous instance's.
	for _, name := range runByPin {
		if err := d.pinProgram(name); err != nil {
			return err
		}
	}
	// A program attached to a map, not a cgroup, cannot follow the map to a
	// new one: its old link goes.
	_, newSocks := d.fresh[KmeshMapKmSocks]
	closeAll(d.fresh)
	d.fresh = map[string]*ebpf.Map{}
	for _, a := range attachments {
		prog := d.programs[a.name]
		// A part switched off (or that this kernel lacks) must not keep
		// running from an earlier instance's link.
		if prog == nil || (a.attach == ebpf.AttachSkMsgVerdict && newSocks) {
			if err := removeLink(filepath.Join(d.opts.Dir, "link_"+a.name)); err != nil {
				return err
			}
		}
		if prog == nil {
			continue
		}
		l, err := d.attach(a.name, prog, a.attach)
		if err != nil {
			return err
		}
		d.links = append(d.links, l)
	}
	d.carry(carries, false)
	return nil
}

// carry copies the entries of replaced maps of carried (carry.go): first
// before the pins move, then once the programs are switched. A failure
// costs the connections being set up, not the switch.
func (d *Datapath) carry(carries []*carry, first bool) {
	for _, c := range carries {
		if err := c.copy(first); err != nil {
			d.log.Warn("entries of a map created anew not carried over", "map", c.name, "err", err)
		}
		if !first {
			d.log.Info("entries carried into a map created anew", "map", c.name, "entries", c.copied)
		}
	}
}

// attachments lists every program with its cgroup hook; the link pin is
// named after the program.
var attachments = []struct {
	name   string
	attach ebpf.AttachType
}{
	{KmeshProgKmConnect4, ebpf.AttachCGroupInet4Connect},
	{KmeshProgKmConnect6, ebpf.AttachCGroupInet6Connect},
	{KmeshProgKmGetpeername4, ebpf.AttachCgroupInet4GetPeername},
	{KmeshProgKmGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	{KmeshProgKmSockops, ebpf.AttachCGroupSockOps},
	{KmeshProgKmSkmsg, ebpf.AttachSkMsgVerdict}, // on km_socks
	{KmeshProgKmIngress, ebpf.AttachCGroupInetIngress},
}

// runByPin lists the programs other processes run with BPF_PROG_RUN,
// through a pin named ProgramPin(name).
var runByPin = []string{KmeshProgKmLbOutcome}

// ProgramPin is where Commit pins a program of runByPin in dir.
func ProgramPin(dir, name string) string { return filepath.Join(dir, "prog_"+name) }

func (d *Datapath) pinProgram(name string) error {
	pin := ProgramPin(d.opts.Dir, name)
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("program %s: replace pin %s: %w", name, pin, err)
	}
	prog := d.programs[name]
	if prog == nil {
		return nil // this kernel lacks it: no stale pin left either
	}
	if err := prog.Pin(pin); err != nil {
		return fmt.Errorf("program %s: pin %s: %w", name, pin, err)
	}
	return nil
}

func (d *Datapath) attach(name string, prog *ebpf.Program, at ebpf.AttachType) (link.Link, error) {
	pin := filepath.Join(d.opts.Dir, "link_"+name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("program %s: update pinned link %s: %w", name, pin, err)
		}
		d.log.Debug("program replaced behind pinned link", "program", name)
		return l, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("program %s: open pinned link %s: %w", name, pin, err)
	}
	var l link.Link
	var err error
	if at == ebpf.AttachSkMsgVerdict {
		l, err = link.AttachRawLink(link.RawLinkOptions{Target: d.KmSocks.FD(), Program: prog, Attach: at})
	} else {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: d.opts.Cgroup, Attach: at, Program: prog})
	}
	if err != nil {
		return nil, fmt.Errorf("program %s: attach to cgroup %s: %w", name, d.opts.Cgroup, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("program %s: pin link %s: %w", name, pin, err)
	}
	return l, nil
}

// Close releases this process's handles. The pins keep the data plane in
// force; only Remove takes it down. Maps Open created but Commit never

// Program returns one of the loaded programs by name (KmeshProg*), for
// programs a component runs itself, such as an iterator.
func (d *Datapath) Program(name string) *ebpf.Program { return d.programs[name] }

// pinned go with it.
func (d *Datapath) Close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	closeAll(d.fresh)
	for _, p := range d.programs {
		errs = append(errs, p.Close())
	}
	errs = append(errs, d.KmeshMaps.Close())
	errs = append(errs, d.lock.Close())
	return errors.Join(errs...)
}

// Discard closes a data plane that was opened but never committed, and
// removes the directories Open created for it: a kmeshd that refuses its
// config after loading the programs (it reads the config while they
// load) leaves nothing behind. Before Commit nothing is pinned in them.
func (d *Datapath) Discard() error {
	err := d.Close()
	removeDirs(d.created)
	return err
}

// missingDirs returns dir and those of its parents that do not exist,
// deepest first.
func missingDirs(dir string) []string {
	var out []string
	for dir = filepath.Clean(dir); ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return out
		}
		out = append(out, dir)
		if filepath.Dir(dir) == dir {
			return out
		}
	}
}

// removeDirs removes the directories, deepest first, while they are empty.
func removeDirs(dirs []string) {
	for _, dir := range dirs {
		if os.Remove(dir) != nil {
			return
		}
	}
}

// Remove detaches every pinned link in dir and deletes every pin and the
// directory itself. Removing a directory that does not exist is not an
// error, so cleanup can run twice. A directory that is not on bpffs is
// left alone (a mistyped --bpf-dir must not delete a tree of files), and so
// is one a running kmeshd holds.
func Remove(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if !onBPFFS(dir) {
		return fmt.Errorf("bpf dir %s: %w; removed nothing", dir, errNotBPFFS)
	}
	lock, err := lockDir(dir)
	if errors.Is(err, ErrInUse) {
		return fmt.Errorf("bpf dir %s: a running kmeshd holds it (stop it first); removed nothing", dir)
	}
	if err != nil {
		return err
	}
	defer lock.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("bpf dir %s: %w", dir, err)
	}
	var errs []error
	// Links first, so no program runs on maps about to go.
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "link_") {
			errs = append(errs, removeLink(filepath.Join(dir, e.Name())))
		}
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeLink detaches the link pinned at path, if any.
func removeLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("link %s: unpin: %w", path, err)
	}
	return nil
}

func closeAll(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}
