package bpf

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestCommit_CarriesTunnelDestinations: another --max-sockets creates
// km_tunnel_dst anew (with km_socks and km_redir_bytes, sized by the same
// flag; nothing else). The destinations the old programs left for the
// tunnel, before Open and until Commit switched them, are in the new map
// once it is pinned, where a tunnel that opens the pin again looks; an
// entry already written into the new map is not overwritten.
func TestCommit_CarriesTunnelDestinations(t *testing.T) {
	b := newRestartBed(t)
	b.start(b.opts.Limits, fillOne) // keyTunnelDst, as the old programs would
	before := b.pinnedIDs()
	old, err := ebpf.LoadPinnedMap(filepath.Join(b.opts.Dir, KmeshMapKmTunnelDst), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	limits := b.opts.Limits
	limits.Sockets *= 2
	meanwhile := KmeshTunnelKey{NetnsCookie: 42, Addr: keyTunnelDst.Addr, Port: 40001}
	mine := KmeshTunnelKey{NetnsCookie: 42, Addr: keyTunnelDst.Addr, Port: 40002}
	logged, created := b.start(limits, func(d *Datapath) {
		// The old programs still run: a connect now leaves its
		// destination in the old map.
		if err := old.Put(meanwhile, KmeshTunnelDst{Port: 8081, Family: 2}); err != nil {
			t.Fatal(err)
		}
		if err := old.Put(mine, KmeshTunnelDst{Port: 1, Family: 2}); err != nil {
			t.Fatal(err)
		}
		if err := d.KmTunnelDst.Put(mine, KmeshTunnelDst{Port: 8082, Family: 2}); err != nil {
			t.Fatal(err)
		}
	})
	if want := []string{KmeshMapKmRedirBytes, KmeshMapKmSocks, KmeshMapKmTunnelDst}; !slices.Equal(created, want) {
		t.Fatalf("another --max-sockets created %v, want %v", created, want)
	}
	requireKept(t, before, b.pinnedIDs(), created)
	if !strings.Contains(logged, `msg="entries carried into a map created anew" map=km_tunnel_dst entries=2`) {
		t.Errorf("no line says 2 entries were carried into km_tunnel_dst:\n%s", logged)
	}
	now, err := ebpf.LoadPinnedMap(filepath.Join(b.opts.Dir, KmeshMapKmTunnelDst), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer now.Close()
	for key, port := range map[KmeshTunnelKey]uint16{keyTunnelDst: 8080, meanwhile: 8081, mine: 8082} {
		var v KmeshTunnelDst
		if err := now.Lookup(key, &v); err != nil || v.Port != port {
			t.Errorf("new km_tunnel_dst at port %d: %+v, %v; want the destination port %d", key.Port, v, err, port)
		}
	}
}
