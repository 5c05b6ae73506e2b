package kube

import (
	"errors"
	"net/netip"
	"testing"
)

// fakeHost is a host of namespaces for a Resolver: path -> inode and
// addresses.
type fakeHost struct {
	inodes map[string]uint64
	addrs  map[string][]string
	order  []string
}

func (h *fakeHost) resolver() *Resolver {
	r := &Resolver{cache: map[string]nsEntry{}}
	r.list = func() ([]nsEntry, error) {
		var out []nsEntry
		for _, p := range h.order {
			if ino, ok := h.inodes[p]; ok {
				out = append(out, nsEntry{p, ino})
			}
		}
		return out, nil
	}
	r.addrs = func(p string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, a := range h.addrs[p] {
			out = append(out, netip.MustParseAddr(a))
		}
		return out, nil
	}
	r.inode = func(p string) (uint64, error) {
		ino, ok := h.inodes[p]
		if !ok {
			return 0, errors.New("gone")
		}
		return ino, nil
	}
	return r
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestResolver_FindsAndCaches(t *testing.T) {
	h := &fakeHost{
		inodes: map[string]uint64{"/run/netns/a": 1, "/run/netns/b": 2},
		addrs: map[string][]string{
			"/run/netns/a": {"127.0.0.1", "fe80::1", "10.1.1.10", "fd00:1:1::10"},
			"/run/netns/b": {"127.0.0.1", "fe80::1", "10.1.1.11"},
		},
		order: []string{"/run/netns/a", "/run/netns/b"},
	}
	r := h.resolver()
	for range 3 {
		p, err := r.Resolve("uid-a", ips("10.1.1.10", "fd00:1:1::10"))
		if err != nil || p != "/run/netns/a" {
			t.Fatalf("Resolve = %q, %v; want /run/netns/a", p, err)
		}
	}
	if r.scans != 1 {
		t.Fatalf("%d scans for three resolves of one pod, want 1 (cached)", r.scans)
	}

	// Another pod of the same burst: found in the last scan's index and
	// checked in its namespace alone.
	if p, err := r.Resolve("uid-b", ips("10.1.1.11")); err != nil || p != "/run/netns/b" {
		t.Fatalf("Resolve = %q, %v; want /run/netns/b", p, err)
	}
	if r.scans != 1 {
		t.Fatalf("%d scans after a second pod, want 1 (from the last index)", r.scans)
	}

	// The sandbox is re-created: same path, new namespace (inode).
	h.inodes["/run/netns/a"] = 3
	if p, err := r.Resolve("uid-a", ips("10.1.1.10")); err != nil || p != "/run/netns/a" {
		t.Fatalf("after re-creation Resolve = %q, %v", p, err)
	}
	if r.scans != 2 {
		t.Fatalf("%d scans, want a new scan after the namespace changed", r.scans)
	}

	// Forget drops pods that are gone.
	r.Forget(map[string]bool{"uid-b": true})
	if _, ok := r.cache["uid-b|10.1.1.11"]; len(r.cache) != 1 || !ok {
		t.Fatalf("cache after Forget: %v", r.cache)
	}
}

func TestResolver_Errors(t *testing.T) {
	h := &fakeHost{
		inodes: map[string]uint64{"/run/netns/a": 1, "/run/netns/b": 2, "/proc/9/ns/net": 4},
		addrs: map[string][]string{
			"/run/netns/a":   {"10.1.1.10", "10.9.9.9"},
			"/run/netns/b":   {"10.1.1.11", "10.9.9.9"},
			"/proc/9/ns/net": {"fd00::5"},
		},
		order: []string{"/run/netns/a", "/run/netns/b", "/proc/9/ns/net"},
	}
	tests := []struct {
		name string
		ips  []netip.Addr
		want string
		err  error
	}{
		{"not_found", ips("10.1.1.99"), "", ErrNotFound},
		{"ambiguous", ips("10.9.9.9"), "", ErrAmbiguous},
		{"split_across_namespaces", ips("10.1.1.10", "10.1.1.11"), "", ErrAmbiguous},
		{"v4_mapped", ips("::ffff:10.1.1.11"), "/run/netns/b", nil},
		{"proc_path", ips("fd00::5"), "/proc/9/ns/net", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := h.resolver().Resolve("uid", tc.ips)
			if !errors.Is(err, tc.err) || p != tc.want {
				t.Fatalf("Resolve = %q, %v; want %q, %v", p, err, tc.want, tc.err)
			}
		})
	}
}
