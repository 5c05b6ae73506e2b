package kube

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var (
	// ErrNotFound: no network namespace on this host has the address.
	ErrNotFound = errors.New("no network namespace has the address")
	// ErrAmbiguous: several network namespaces have the address.
	ErrAmbiguous = errors.New("several network namespaces have the address")
)

// Resolver finds the network namespace that holds a pod's IPs; see the
// package doc. It is safe for concurrent use.
type Resolver struct {
	namedDirs []string // the runtimes' named namespaces (NamedNetnsDirs)
	procDir   string   // the proc file system: /proc
	// owned reports whether a namespace belongs to the initial user
	// namespace: one created inside another user namespace (which any
	// user may make) is never evidence of a pod.
	owned func(path string) (bool, error)

	// list and addrs are the host: replaced in tests.
	list  func() ([]nsEntry, error)
	addrs func(path string) ([]netip.Addr, error)
	inode func(path string) (uint64, error)

	mu    sync.Mutex
	cache map[string]nsEntry       // pod key (uid and IPs) -> namespace
	index map[netip.Addr][]nsEntry // the last scan's
	scans int                      // full scans done
}

// nsEntry is one network namespace: a path naming it and its inode.
type nsEntry struct {
	path  string
	inode uint64
}

// NamedNetnsDirs are where container runtimes and CNI plugins keep the
// network namespaces of pods by name (a bind mount per namespace): ip
// netns, containerd's CRI plugin (cni-<id>) and CRI-O in /var/run/netns
// (usually the same directory as /run/netns), Docker in
// /var/run/docker/netns. Only root can create files there. The first path
// of a namespace is the one reported.
var NamedNetnsDirs = []string{"/var/run/netns", "/run/netns", "/var/run/docker/netns", "/run/docker/netns"}

// NewResolver returns a Resolver of this host's namespaces.
func NewResolver() *Resolver {
	r := &Resolver{namedDirs: NamedNetnsDirs, procDir: "/proc", cache: map[string]nsEntry{}}
	r.owned = r.initialUserns
	r.list = r.listHost
	r.addrs = linkAddrs
	r.inode = nsInode
	return r
}

// Resolve returns the path of the network namespace that holds every one
// of ips, for the pod with the given key (its UID): the cached one while it
// still names the same namespace, else the result of a new scan.
func (r *Resolver) Resolve(key string, ips []netip.Addr) (string, error) {
	if len(ips) == 0 {
		return "", errors.New("no address")
	}
	ck := cacheKey(key, ips)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.cache[ck]; ok {
		if ino, err := r.inode(e.path); err == nil && ino == e.inode {
			return e.path, nil
		}
		delete(r.cache, ck)
	}
	// The last scan found the other pods of a burst: check its answer in
	// that one namespace before reading them all again.
	if e, err := r.lookup(r.index, ips); err == nil && r.holds(e, ips) {
		r.cache[ck] = e
		return e.path, nil
	}
	index, err := r.scan()
	if err != nil {
		return "", err
	}
	r.index = index
	e, err := r.lookup(index, ips)
	if err != nil {
		return "", err
	}
	r.cache[ck] = e
	return e.path, nil
}

// lookup finds the one namespace that holds every one of ips in index.
func (r *Resolver) lookup(index map[netip.Addr][]nsEntry, ips []netip.Addr) (nsEntry, error) {
	var found *nsEntry
	for _, ip := range ips {
		es := index[ip.Unmap()]
		switch {
		case len(es) == 0:
			return nsEntry{}, fmt.Errorf("%s: %w", ip, ErrNotFound)
		case len(es) > 1:
			var paths []string
			for _, e := range es {
				paths = append(paths, e.path)
			}
			return nsEntry{}, fmt.Errorf("%s: %w: %s", ip, ErrAmbiguous, strings.Join(paths, ", "))
		case found != nil && found.inode != es[0].inode:
			return nsEntry{}, fmt.Errorf("%s: %w: %s and %s", ip, ErrAmbiguous, found.path, es[0].path)
		}
		found = &es[0]
	}
	return *found, nil
}

// holds reports whether the namespace e still is at its path and has ips.
func (r *Resolver) holds(e nsEntry, ips []netip.Addr) bool {
	if ino, err := r.inode(e.path); err != nil || ino != e.inode {
		return false
	}
	addrs, err := r.addrs(e.path)
	if err != nil {
		return false
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	for _, ip := range ips {
		if !slices.Contains(addrs, ip.Unmap()) {
			return false
		}
	}
	return true
}

// Forget drops the cached results of pods whose keys are not in keep.
func (r *Resolver) Forget(keep map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ck := range r.cache {
		if !keep[strings.SplitN(ck, "|", 2)[0]] {
			delete(r.cache, ck)
		}
	}
}

func cacheKey(key string, ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.Unmap().String()
	}
	sort.Strings(s)
	return key + "|" + strings.Join(s, ",")
}

// scan reads the addresses of every namespace on the host into an index
// from address to the namespaces holding it.
func (r *Resolver) scan() (map[netip.Addr][]nsEntry, error) {
	r.scans++
	entries, err := r.list()
	if err != nil {
		return nil, err
	}
	index := map[netip.Addr][]nsEntry{}
	for _, e := range entries {
		addrs, err := r.addrs(e.path)
		if err != nil {
			continue // gone since listed, or not ours to read
		}
		for _, a := range addrs {
			a = a.Unmap()
			if !a.IsGlobalUnicast() {
				continue // loopback and link-local repeat in every namespace
			}
			index[a] = append(index[a], e)
		}
	}
	return index, nil
}

// listHost lists the runtimes' named namespaces, then those of processes
// not named there, once per inode, without the one kmeshd runs in. A named
// namespace is trusted (only root names one); a process's is left out when
// a user namespace other than kmeshd's owns it, since any user can make
// one (a pod with hostUsers: false has such a namespace, and its runtime
// names it).
func (r *Resolver) listHost() ([]nsEntry, error) {
	seen := map[uint64]bool{}
	if own, err := nsInode(filepath.Join(r.procDir, "self/ns/net")); err == nil {
		seen[own] = true
	}
	var out []nsEntry
	add := func(path string, named bool) {
		ino, err := nsInode(path)
		if err != nil || seen[ino] {
			return
		}
		seen[ino] = true
		if !named {
			if ok, err := r.owned(path); err != nil || !ok {
				return // another user namespace's, or unreadable: no evidence
			}
		}
		out = append(out, nsEntry{path: path, inode: ino})
	}
	for _, dir := range r.namedDirs {
		named, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		for _, d := range named {
			add(filepath.Join(dir, d.Name()), true)
		}
	}
	procs, err := os.ReadDir(r.procDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", r.procDir, err)
	}
	for _, d := range procs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		add(filepath.Join(r.procDir, d.Name(), "ns/net"), false)
	}
	return out, nil
}

// initialUserns reports whether the network namespace at path is owned by
// the user namespace kmeshd runs in, the host's initial one (kmeshd needs
// it for its BPF programs; /proc/1/ns/user may be closed to it): the
// kernel names a namespace's owner (ioctl NS_GET_USERNS), and a namespace
// made by `unshare -U -n`, which needs no privilege, is owned by the new
// user namespace.
func (r *Resolver) initialUserns(path string) (bool, error) {
	var initial unix.Stat_t
	if err := unix.Stat(filepath.Join(r.procDir, "self/ns/user"), &initial); err != nil {
		return false, fmt.Errorf("initial user namespace: %w", err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	owner, err := unix.IoctlRetInt(fd, unix.NS_GET_USERNS)
	if err != nil {
		return false, fmt.Errorf("netns %s: owner: %w", path, err)
	}
	defer unix.Close(owner)
	var st unix.Stat_t
	if err := unix.Fstat(owner, &st); err != nil {
		return false, err
	}
	return st.Dev == initial.Dev && st.Ino == initial.Ino, nil
}

// nsInode is the inode of the namespace a path names; two paths name the
// same namespace when their inodes are equal (all live on nsfs).
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// linkAddrs lists the addresses of the namespace at path through a
// netlink socket opened inside it.
func linkAddrs(path string) ([]netip.Addr, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip)
		}
	}
	return out, nil
}
