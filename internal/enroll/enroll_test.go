package enroll

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// manageKeys returns the cookies km_manage holds.
func manageKeys(t *testing.T, m *ebpf.Map) []uint64 {
	t.Helper()
	var k bpf.KmeshManageKey
	var v bpf.KmeshManageValue
	var out []uint64
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k.NetnsCookie)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestEnroller_ChangeReadsOnlyNewPaths: Change enrolls an added path by
// reading its cookie alone and drops a removed one without reading any;
// a Change with the same paths reads nothing. Sync reads every path again.
// km_manage holds exactly the given namespaces after each.
func TestEnroller_ChangeReadsOnlyNewPaths(t *testing.T) {
	bed := testbed.NewT(t)
	var paths []string
	var cookies []uint64
	for i, n := range []string{"a", "b", "c"} {
		node, err := bed.AddNode(n, netip.MustParsePrefix([]string{"10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"}[i]))
		if err != nil {
			t.Fatal(err)
		}
		c, err := Cookie(node.NetnsPath)
		if err != nil {
			t.Fatal(err)
		}
		paths, cookies = append(paths, node.NetnsPath), append(cookies, c)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e := New(m, slog.New(slog.DiscardHandler))
	step := func(name string, f func([]string, map[uint64]string) error, ps []string, wantReads int) {
		t.Helper()
		before := e.Reads()
		if err := f(ps, nil); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := e.Reads() - before; got != wantReads {
			t.Errorf("%s: read %d cookies, want %d", name, got, wantReads)
		}
		var want []uint64
		for i, p := range paths {
			if slices.Contains(ps, p) {
				want = append(want, cookies[i])
			}
		}
		slices.Sort(want)
		if got := manageKeys(t, m); !slices.Equal(got, want) {
			t.Errorf("%s: km_manage holds %v, want %v", name, got, want)
		}
		if got := slices.Sorted(maps.Values(e.Cookies())); !slices.Equal(got, want) {
			t.Errorf("%s: Cookies() %v, want %v", name, got, want)
		}
	}
	step("first sync", e.Sync, paths[:2], 2)
	step("same paths", e.Change, paths[:2], 0)
	step("one added", e.Change, paths, 1)
	step("one removed", e.Change, []string{paths[0], paths[2]}, 0)
	step("full sync", e.Sync, []string{paths[0], paths[2]}, 2)
}
