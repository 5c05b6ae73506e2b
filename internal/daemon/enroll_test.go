package daemon

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/enroll"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
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
	cookies, who := e.workloadOf(paths, maps.Clone(paths), true, slog.New(slog.DiscardHandler))
	want := map[uint64]string{1: "default/file", 2: "apps/by-name", 3: "apps/by-ip", 5: "apps/static"}
	if !maps.Equal(cookies, want) {
		t.Fatalf("workloads by cookie %v, want %v", cookies, want)
	}
	wantWho := map[string]string{"default/file": "/netns/file", "apps/by-name": "/netns/by-name", "apps/by-ip": "/netns/by-ip", "apps/static": "/netns/static"}
	if !maps.Equal(who, wantWho) {
		t.Fatalf("netns by workload %v, want %v", who, wantWho)
	}
}

// TestEnrollment_LocalWorkloadChangeReadsNoNamespace: under xDS (workloads
// without a netns), a change to a workload of this node re-matches the
// enrolled namespaces without reading any namespace's cookie again: a
// namespace enrolled by path whose address a new xDS workload takes is
// named as that workload, and km_manage keeps every namespace. A full
// sync still reads them all.
func TestEnrollment_LocalWorkloadChangeReadsNoNamespace(t *testing.T) {
	bed := testbed.NewT(t)
	var paths []string
	var nodes []*testbed.Node
	for i, n := range []string{"a", "b", "c"} {
		node, err := bed.AddNode(n, netip.MustParsePrefix(fmt.Sprintf("10.1.%d.0/24", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		paths, nodes = append(paths, node.NetnsPath), append(nodes, node)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	log := slog.New(slog.DiscardHandler)
	dp, err := dataplane.New(dataplane.NewFakeStore(bpf.DefaultLimits).Store, bpf.DefaultLimits, log)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{node: "node-a", static: paths, enroller: enroll.New(m, log), writer: dp, log: log}
	w := func(name string, node *testbed.Node) *model.Workload {
		return &model.Workload{Namespace: "apps", Name: name, Node: "node-a", Addresses: []netip.Addr{node.UnderlayAddr4}}
	}
	first := w("first", nodes[0])
	if n, err := d.enrollChanged(&model.Changes{Workloads: []*model.Workload{first}}, &model.Changes{}, true); err != nil || n != 3 {
		t.Fatalf("full sync: %d enrolled, %v", n, err)
	}
	reads := d.enroller.Reads()
	if reads < 3 {
		t.Fatalf("full sync read %d cookies, want every namespace's", reads)
	}
	if who := d.enrolledWorkloads(); who["apps/first"] != paths[0] {
		t.Fatalf("enrolled workloads %v, want apps/first in %s", who, paths[0])
	}
	// xDS: one workload of this node added, one removed.
	second := w("second", nodes[1])
	c := &model.Changes{Workloads: []*model.Workload{second}, RemovedWorkloads: []string{"apps/first"}}
	undo := &model.Changes{Workloads: []*model.Workload{first}, RemovedWorkloads: []string{"apps/second"}}
	if n, err := d.enrollChanged(c, undo, false); err != nil || n != 3 {
		t.Fatalf("change: %d enrolled, %v", n, err)
	}
	if got := d.enroller.Reads() - reads; got != 0 {
		t.Errorf("a local workload change read %d namespace cookies, want 0", got)
	}
	if who := d.enrolledWorkloads(); len(who) != 1 || who["apps/second"] != paths[1] {
		t.Errorf("enrolled workloads %v, want apps/second in %s alone", who, paths[1])
	}
	if n, err := d.enrollChanged(&model.Changes{}, &model.Changes{}, true); err != nil || n != 3 || d.enroller.Reads()-reads < 3 {
		t.Errorf("full sync: %d enrolled, %v, %d reads", n, err, d.enroller.Reads()-reads)
	}
}
