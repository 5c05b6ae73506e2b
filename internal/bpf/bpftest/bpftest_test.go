package bpftest

import (
	"errors"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
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
	for _, m := range s.Maps {
		if m.Type == ebpf.Hash || m.Type == ebpf.Array {
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
	ret, err := coll.Programs[name].Run(&ebpf.RunOptions{})
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	if ret != 0 {
		t.Fatalf("check failed at bpf/tests/lb_test.c:%d", ret)
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
