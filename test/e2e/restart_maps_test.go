//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// pinnedMapIDs are the kernel ids of the maps pinned in a kmeshd's bpf dir,
// by pin name.
func pinnedMapIDs(t *testing.T, dir string) map[string]ebpf.MapID {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]ebpf.MapID{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "link_") || strings.HasPrefix(e.Name(), "prog_") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatalf("pin %s: %v", e.Name(), err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids[e.Name()] = id
	}
	return ids
}

// TestHBONE_KmeshdUpgradeAddingAMapKeepsTheOthers: the upgrade to a build
// that adds a map (as session 11's km_tunnel_legs), under tunnelled and
// balanced traffic from node-a's client, on both nodes. The pins of the
// older build are simulated: kmeshd stopped, its km_tunnel_legs unpinned.
// The new kmeshd creates that map alone and reuses every other pinned map
// (the same kernel maps: their entries, counters and in-flight tunnel
// destinations stay), its "programs loaded" line says so, and not one
// request fails or is reset.
func TestHBONE_KmeshdUpgradeAddingAMapKeepsTheOthers(t *testing.T) {
	h := newHBONEMesh(t, helloWorkloads, "")
	tunnelled := []string{"--url", "http://10.1.2.12:8080/"}
	perConn := h.startTraffic("new-connection", tunnelled...)
	keepalive := h.startTraffic("keep-alive", append(tunnelled, "--keepalive")...)
	balanced := h.startTraffic("service") // 10.96.0.10: hello-1 here, hello-2 and hello-3 tunnelled
	loaded := regexp.MustCompile(`msg="programs loaded" .*maps_created=(\d+) maps_reused=(\d+)`)
	time.Sleep(300 * time.Millisecond)
	for _, node := range []string{"node-a", "node-b"} {
		k := h.kmeshd[node]
		if err := k.proc.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		<-k.proc.Done()
		dir := h.nodes[node].BPFDir
		before := pinnedMapIDs(t, dir)
		if _, ok := before[bpf.KmeshMapKmTunnelLegs]; !ok {
			t.Fatalf("%s: no %s pinned before the upgrade: %v", node, bpf.KmeshMapKmTunnelLegs, before)
		}
		if err := os.Remove(filepath.Join(dir, bpf.KmeshMapKmTunnelLegs)); err != nil {
			t.Fatal(err)
		}
		delete(before, bpf.KmeshMapKmTunnelLegs)
		time.Sleep(200 * time.Millisecond) // new connections while no kmeshd runs

		k = h.startKmeshdBin(h.mesh.kmeshd, node, configPath(h.mesh, node+".yaml"), h.kmeshdFlags(node)...)
		h.kmeshd[node] = k
		after := pinnedMapIDs(t, dir)
		for name, id := range before {
			if after[name] != id {
				t.Errorf("%s: map %s was map %d, now %d: recreated by an upgrade that only added %s",
					node, name, id, after[name], bpf.KmeshMapKmTunnelLegs)
			}
		}
		if after[bpf.KmeshMapKmTunnelLegs] == 0 {
			t.Errorf("%s: the upgraded kmeshd pinned no %s", node, bpf.KmeshMapKmTunnelLegs)
		}
		sm := loaded.FindStringSubmatch(k.proc.Stderr())
		if sm == nil || sm[1] != "1" {
			t.Errorf("%s: programs loaded line %q: want maps_created=1 (%s alone)", node, sm, bpf.KmeshMapKmTunnelLegs)
		}
		if !regexp.MustCompile(`msg="creating a map anew" .*map=` + bpf.KmeshMapKmTunnelLegs).MatchString(k.proc.Stderr()) {
			t.Errorf("%s: kmeshd does not say it created %s:\n%s", node, bpf.KmeshMapKmTunnelLegs, k.proc.Stderr())
		}
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	for _, tr := range []*traffic{perConn, keepalive} {
		rs, rate, conns := tr.stopServed(t, "hello-2", 20)
		t.Logf("%s: %d requests, %.0f/s, %d connections", tr.name, len(rs), rate, conns)
	}
	rs, rate := balanced.stop(t)
	pods := map[string]int{}
	for _, r := range rs {
		if r.Error != "" {
			t.Fatalf("service request %d failed: %s (%v)", r.Seq, r.Error, counts(rs))
		}
		pods[r.Pod]++
	}
	if len(rs) < 20 || len(pods) < 2 {
		t.Fatalf("service: %d requests, answered by %v: want at least 20, balanced over more than one pod", len(rs), pods)
	}
	t.Logf("service: %d requests, %.0f/s, by pod %v", len(rs), rate, pods)
}
