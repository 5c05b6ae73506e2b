package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// newDstMap creates a km_tunnel_dst of kmeshd's spec, closed with the test.
func newDstMap(t *testing.T) *ebpf.Map {
	t.Helper()
	spec, err := bpf.LoadKmesh()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[bpf.KmeshMapKmTunnelDst].Copy()
	ms.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// pinDst makes m the km_tunnel_dst pinned in dir, as kmeshd's Commit
// moves the pin to a map it created anew.
func pinDst(t *testing.T, dir string, m *ebpf.Map) {
	t.Helper()
	tmp := filepath.Join(dir, "next")
	if err := m.Pin(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, bpf.KmeshMapKmTunnelDst)); err != nil {
		t.Fatal(err)
	}
	// Pin sets m's pin path; the rename moved it.
	if err := m.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// putDst leaves a destination for the connection from peer in m, as the
// connect hook does.
func putDst(t *testing.T, m *ebpf.Map, peer netip.AddrPort, port uint16) {
	t.Helper()
	key := bpf.KmeshTunnelKey{NetnsCookie: 7, Addr: bpf.AddrWords(peer.Addr()), Port: peer.Port()}
	v := bpf.KmeshTunnelDst{Addr: bpf.AddrWords(netip.MustParseAddr("10.1.2.11")), Port: bpf.NetPort(port), Family: 2}
	if err := m.Put(key, v); err != nil {
		t.Fatal(err)
	}
}

// TestOrigDst_AcrossAMapCreatedAnew: kmeshd creates km_tunnel_dst anew on
// another --max-sockets and moves the pin; its old programs write the old
// map until they are switched, and kmeshd copies what they wrote into the
// new map only after that. A tunnel that moved to the new map (on a miss
// of a connection made by the new programs) must still find a destination
// the old programs wrote meanwhile, and take each destination once.
func TestOrigDst_AcrossAMapCreatedAnew(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("needs root (bpffs)")
	}
	dir, err := os.MkdirTemp("/sys/fs/bpf", fmt.Sprintf("kmtunpins-%d-", os.Getpid()))
	if err != nil {
		t.Skipf("no bpffs at /sys/fs/bpf: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tun := &Tunnel{cfg: Config{BPFDir: dir}, log: slog.New(slog.DiscardHandler)}
	t.Cleanup(tun.closeMap)

	old := newDstMap(t)
	pinDst(t, dir, old)
	first := netip.MustParseAddrPort("10.1.1.10:40000")
	putDst(t, old, first, 8080)
	if r, err := tun.origDst(7, first); err != nil || r.dst.Port() != 8080 {
		t.Fatalf("before the switch: %v, %v; want port 8080", r, err)
	}

	// kmeshd's Commit: the new map pinned; the old programs still run.
	now := newDstMap(t)
	pinDst(t, dir, now)
	byNew := netip.MustParseAddrPort("10.1.1.10:40001")
	byOld := netip.MustParseAddrPort("10.1.1.10:40002")
	putDst(t, now, byNew, 8081)
	putDst(t, old, byOld, 8082)

	if r, err := tun.origDst(7, byNew); err != nil || r.dst.Port() != 8081 {
		t.Fatalf("a connection of the new programs: %v, %v; want port 8081", r, err)
	}
	if r, err := tun.origDst(7, byOld); err != nil || r.dst.Port() != 8082 {
		t.Fatalf("a connection the old programs left in the old map, after the tunnel moved to the new one: %v, %v; want port 8082", r, err)
	}
	if _, err := tun.origDst(7, byOld); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("the same connection again: %v; want it taken once (not found)", err)
	}
}
