package bpftest

import (
	"errors"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/maglev"
)

// TestLB runs every test_ program of bpf/tests/lb_test.c on fresh maps.
func TestLB(t *testing.T) {
	requirePrivilege(t)
	spec, err := loadLbTest()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for name := range spec.Programs {
		if strings.HasPrefix(name, "test_") {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		t.Fatal("bpf/tests/lb_test.c has no test_ programs")
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(strings.TrimPrefix(name, "test_"), func(t *testing.T) {
			runOne(t, spec, name)
		})
	}
}

func runOne(t *testing.T, spec *ebpf.CollectionSpec, name string) {
	s := spec.Copy()
	for other := range s.Programs {
		if other != name {
			delete(s.Programs, other)
		}
	}
	for name, m := range s.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata, .bss: one entry, the globals
		}
		if m.Type == ebpf.Hash || m.Type == ebpf.Array || m.Type == ebpf.ArrayOfMaps {
			m.MaxEntries = 64
		}
	}
	coll, err := ebpf.NewCollection(s)
	if errors.Is(err, ebpf.ErrNotSupported) {
		skipOrFail(t, "kernel lacks a feature the test needs: %v", err)
	}
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	defer coll.Close()
	if strings.HasPrefix(name, "test_maglev") {
		putMaglevTable(t, s, coll)
	}
	ret, err := coll.Programs[name].Run(&ebpf.RunOptions{})
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	if ret != 0 {
		t.Fatalf("check failed at bpf/tests/lb_test.c:%d", ret)
	}
	if name == "test_hash_of_keys" {
		checkHashes(t, coll)
	}
}

// putMaglevTable gives service 7 (SVC_ID), IPv4, a Maglev table over
// backends 1..3, as the dataplane builds it.
func putMaglevTable(t testing.TB, s *ebpf.CollectionSpec, coll *ebpf.Collection) {
	t.Helper()
	table, err := maglev.Build([]maglev.Backend{{Name: "b1"}, {Name: "b2"}, {Name: "b3"}}, maglev.DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := ebpf.NewMap(s.Maps["km_maglev"].InnerMap)
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	for i, b := range table {
		if err := inner.Put(uint32(i), uint32(b+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := coll.Maps["km_maglev"].Put(uint32(7*2), inner); err != nil {
		t.Fatal(err)
	}
}

// checkHashes compares the kernel's lb_hash of three keys with maglev.Hash.
func checkHashes(t *testing.T, coll *ebpf.Collection) {
	t.Helper()
	var got [3]uint32
	if err := coll.Variables["hash_out"].Get(&got); err != nil {
		t.Fatal(err)
	}
	keys := []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.2"), netip.MustParseAddr("fd00::ffff:a00:2")}
	for i, k := range keys {
		if want := maglev.Hash(k.As16()); got[i] != want {
			t.Errorf("key %s: kernel hash %#x, Go hash %#x", k, got[i], want)
		}
	}
}

// requirePrivilege skips without root, unless the privileged CI job says
// every privileged test must run.
func requirePrivilege(t testing.TB) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "loading eBPF programs needs root")
	}
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
