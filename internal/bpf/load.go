// Package bpf loads Kmesh's eBPF programs into the kernel, pins their maps
// and links under the daemon's bpffs directory, attaches them to a cgroup,
// and removes all of it on request. The Go twins of the C map types
// (KmeshFrontendKey, ...) are generated here by bpf2go from bpf/include/types.h.
//
// Everything lives under one directory per kmeshd instance, so several
// instances can share a kernel: the pins outlive the daemon, and a daemon
// started on an existing directory re-opens the maps it finds there and
// swaps its programs behind the pinned links.
package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Limits are the capacities of the maps, fixed when a map is created.
type Limits struct {
	Services  uint32 // km_service entries (and service ids 1..Services)
	Frontends uint32 // km_frontend: service address:port pairs
	Endpoints uint32 // km_endpoint: endpoint slots, counting weight and both generations in flight
	Backends  uint32 // km_backend: workloads with addresses
	Workloads uint32 // km_manage: enrolled network namespaces
}

// DefaultLimits fit 10,000 services with 100,000 endpoints.
var DefaultLimits = Limits{
	Services:  16384,
	Frontends: 65536,
	Endpoints: 262144,
	Backends:  131072,
	Workloads: 4096,
}

// Options say where the data plane lives.
type Options struct {
	Dir    string // bpffs directory of this instance
	Cgroup string // cgroup v2 directory the programs attach to
	Limits Limits
}

// Datapath is the loaded data plane: its maps, and the links that keep the
// programs attached.
type Datapath struct {
	KmeshMaps
	programs KmeshPrograms
	links    []link.Link
	dir      string
}

// attachments lists every program with its cgroup hook; the link pin is
// named after the program.
func (p *KmeshPrograms) attachments() []struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	return []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{KmeshProgKmConnect4, p.KmConnect4, ebpf.AttachCGroupInet4Connect},
		{KmeshProgKmConnect6, p.KmConnect6, ebpf.AttachCGroupInet6Connect},
		{KmeshProgKmGetpeername4, p.KmGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		{KmeshProgKmGetpeername6, p.KmGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	}
}

// Load loads the programs with the maps pinned in opts.Dir (created there
// when absent), and attaches them to opts.Cgroup through pinned links. A
// link already pinned gets the new program with link.Update, so connections
// are never left without a program.
func Load(opts Options, log *slog.Logger) (*Datapath, error) {
	if err := ensureFS(opts.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("bpf dir %s: %w", opts.Dir, err)
	}
	s, err := spec(opts.Limits)
	if err != nil {
		return nil, err
	}
	pinAll(s)

	var objs KmeshObjects
	err = s.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.Dir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("load programs: %w (the maps pinned in %s were made with other sizes or an older layout; run `kmeshd cleanup --bpf-dir %s` or keep the old limits)", err, opts.Dir, opts.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	d := &Datapath{KmeshMaps: objs.KmeshMaps, programs: objs.KmeshPrograms, dir: opts.Dir}
	for _, a := range objs.KmeshPrograms.attachments() {
		l, err := attach(opts, a.name, a.prog, a.attach, log)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.links = append(d.links, l)
	}
	return d, nil
}

func attach(opts Options, name string, prog *ebpf.Program, at ebpf.AttachType, log *slog.Logger) (link.Link, error) {
	pin := filepath.Join(opts.Dir, "link_"+name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("program %s: update pinned link %s: %w", name, pin, err)
		}
		log.Debug("program replaced behind pinned link", "program", name)
		return l, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("program %s: open pinned link %s: %w", name, pin, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: opts.Cgroup, Attach: at, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("program %s: attach to cgroup %s: %w", name, opts.Cgroup, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("program %s: pin link %s: %w", name, pin, err)
	}
	return l, nil
}

// Close releases this process's handles. The pins keep the data plane in
// force; only Remove takes it down.
func (d *Datapath) Close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, d.programs.Close(), d.KmeshMaps.Close())
	return errors.Join(errs...)
}

// Remove detaches every pinned link in dir and deletes every pin and the
// directory itself. Removing a directory that does not exist is not an
// error, so cleanup can run twice.
func Remove(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bpf dir %s: %w", dir, err)
	}
	var errs []error
	// Links first, so no program runs on maps about to go.
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", path, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("link %s: unpin: %w", path, err))
		}
		l.Close()
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
