package dataplane

import (
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// readTunnelSrc returns km_tunnel_src's entries.
func readTunnelSrc(t *testing.T, m Map) map[uint64]bpf.KmeshBackendValue {
	t.Helper()
	out := map[uint64]bpf.KmeshBackendValue{}
	var c uint64
	var v bpf.KmeshBackendValue
	it := m.Iterate()
	for it.Next(&c, &v) {
		out[c] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDataplane_TunnelSrcFollowsEnrolledNamespaces: km_tunnel_src holds
// both addresses of each enrolled namespace's workload (what the connect
// hook binds a tunnelled socket to), none for a namespace of no known
// workload, and loses a namespace's entry when it leaves, also across a
// restart (a new dataplane on the same maps).
func TestDataplane_TunnelSrcFollowsEnrolledNamespaces(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	m := &model.Mesh{Workloads: []model.Workload{
		{Name: "a", Namespace: "default", Node: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("10.1.1.10"), netip.MustParseAddr("fd00:1:1::10")}},
		{Name: "b", Namespace: "default", Node: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("fd00:1:1::11")}},
	}}
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	ka, kb := m.Workloads[0].Key(), m.Workloads[1].Key()
	if err := d.ApplyNetns(map[uint64]string{1: ka, 2: kb, 3: "default/unknown"}); err != nil {
		t.Fatal(err)
	}
	got := readTunnelSrc(t, maps.KmTunnelSrc)
	v4, v6 := uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4), uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6)
	a := bpf.KmeshBackendValue{Addr4: bpf.Addr4Word(netip.MustParseAddr("10.1.1.10")), Addr6: bpf.AddrWords(netip.MustParseAddr("fd00:1:1::10")), Flags: v4 | v6}
	b := bpf.KmeshBackendValue{Addr6: bpf.AddrWords(netip.MustParseAddr("fd00:1:1::11")), Flags: v6}
	if len(got) != 2 || got[1] != a || got[2] != b {
		t.Fatalf("km_tunnel_src = %+v, want cookie 1 -> %+v, 2 -> %+v and nothing for the unknown workload", got, a, b)
	}

	// A restart while namespace 2 left: the new instance drops its entry
	// and keeps namespace 1's.
	d2, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Apply(m); err != nil {
		t.Fatal(err)
	}
	if err := d2.ApplyNetns(map[uint64]string{1: ka}); err != nil {
		t.Fatal(err)
	}
	if got := readTunnelSrc(t, maps.KmTunnelSrc); len(got) != 1 || got[1] != a {
		t.Fatalf("after a restart without namespace 2: km_tunnel_src = %+v, want only cookie 1 -> %+v", got, a)
	}
}
