package daemon

import (
	"log/slog"
	"maps"
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// TestEnrollment_EveryNamespaceNamesItsWorkload: whatever enrolled a
// namespace, connect() learns its workload (on main before this, only the
// file's netns did, so pods from Kubernetes, --enroll-netns or the admin
// API got no source-side check).
func TestEnrollment_EveryNamespaceNamesItsWorkload(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	w := func(ns, name string, ips ...string) *model.Workload {
		return &model.Workload{Namespace: ns, Name: name, Node: "node-a", Addresses: addrs(ips...)}
	}
	e := &enrollment{
		workloads: map[string]string{"/netns/file": "default/file"},
		local: map[string]*model.Workload{
			"default/file":   w("default", "file", "10.0.0.1"),
			"apps/by-name":   w("apps", "by-name", "10.0.0.2"),
			"apps/by-ip":     w("apps", "by-ip", "10.0.0.3", "fd00::3"),
			"apps/static":    w("apps", "static", "10.0.0.4"),
			"apps/twin-1":    w("apps", "twin-1", "10.0.0.9"),
			"apps/twin-2":    w("apps", "twin-2", "10.0.0.9"),
			"apps/elsewhere": w("apps", "elsewhere", "10.0.0.5"),
		},
		kube: []kube.Pod{
			{Netns: "/netns/by-name", Namespace: "apps", Name: "by-name", IPs: addrs("10.0.0.2")},
			// A pod whose workload has another name: its IPs say who it is.
			{Netns: "/netns/by-ip", Namespace: "apps", Name: "pod-7f9", IPs: addrs("10.0.0.3")},
			// Two workloads hold the address: neither is chosen.
			{Netns: "/netns/twin", Namespace: "apps", Name: "twin", IPs: addrs("10.0.0.9")},
		},
		// A namespace enrolled by path alone, its addresses already read.
		addrs: map[uint64][]netip.Addr{5: addrs("10.0.0.4", "fd00::99")},
	}
	paths := map[string]uint64{"/netns/file": 1, "/netns/by-name": 2, "/netns/by-ip": 3, "/netns/twin": 4, "/netns/static": 5}
	cookies, who := e.workloadOf(paths, maps.Clone(paths), slog.New(slog.DiscardHandler))
	want := map[uint64]string{1: "default/file", 2: "apps/by-name", 3: "apps/by-ip", 5: "apps/static"}
	if !maps.Equal(cookies, want) {
		t.Fatalf("workloads by cookie %v, want %v", cookies, want)
	}
	wantWho := map[string]string{"default/file": "/netns/file", "apps/by-name": "/netns/by-name", "apps/by-ip": "/netns/by-ip", "apps/static": "/netns/static"}
	if !maps.Equal(who, wantWho) {
		t.Fatalf("netns by workload %v, want %v", who, wantWho)
	}
}
