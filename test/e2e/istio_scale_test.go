//go:build e2e

package e2e

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bench/kubemesh"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestIstioScale_ConvergesAndReadinessFlips is the Istio tier at a reduced
// scale (make bench times the full one, 2,000 Services / 10,000 Pods):
// kmeshd connected to the stock istiod while 200 Services and 1,000 Pods
// on five other Nodes are registered ends with every service's pods in its
// maps; then one pod's readiness flips false and true, as its probe would,
// and the pod leaves its service's endpoints (maps and /config_dump) and
// comes back. No timing is asserted.
func TestIstioScale_ConvergesAndReadinessFlips(t *testing.T) {
	findIstioTools(t)
	m := &mesh{t: t, bed: testbed.NewT(t), nodes: map[string]*testbed.Node{}, pods: map[string]*testbed.Pod{}, dir: t.TempDir()}
	var err error
	if m.kmeshd, err = testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd"); err != nil {
		t.Fatal(err)
	}
	env := newIstioEnv(t, m.bed)
	m.addNode("node-a", netip.MustParsePrefix("10.75.1.0/24"))
	env.node(m.nodes["node-a"])
	ka := m.startIstioKmeshd(env, "node-a")

	ctx := context.Background()
	start := time.Now()
	cluster, err := kubemesh.Register(ctx, env.kube, kubemesh.Spec{Services: 200, Pods: 1000, Namespaces: 2, Nodes: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registered 200 services, 1000 pods in %v", time.Since(start).Round(time.Millisecond))
	slots, err := kubemesh.OpenSlots(ka.node.BPFDir)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		n, first := slots.Missing(cluster)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmeshd not converged: %d of 200 services not in its maps with one slot per ready pod, such as %s\n%s",
				n, first, tail(ka.proc.Stderr(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("every service's pods in the maps %v after the first write", time.Since(start).Round(time.Millisecond))

	svc := &cluster.Services[17]
	pod := &cluster.Pods[svc.Pods[2]]
	key := pod.Namespace + "/" + pod.Name
	vip := svc.ClusterIP.String()
	for _, ready := range []bool{false, true} {
		if err := cluster.SetReady(ctx, svc.Pods[2], ready); err != nil {
			t.Fatal(err)
		}
		if err := cluster.WriteSlice(ctx, pod.Service); err != nil {
			t.Fatal(err)
		}
		want := uint32(len(svc.Pods))
		if !ready {
			want--
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := slots.Of(svc.ClusterIP)
			if err == nil && got == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod %s ready=%v: service %s has %d slots (%v) after 30s, want %d", key, ready, vip, got, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		d := dumpView{ka.configDump(t)}
		if eps := d.endpointsOf(vip); slices.Contains(eps, key) != ready || len(eps) != int(want) {
			t.Fatalf("pod %s ready=%v: /config_dump endpoints of %s are %v", key, ready, vip, eps)
		}
		// The other services keep theirs.
		if n, first := slots.Missing(cluster); n != 0 {
			t.Fatalf("pod %s ready=%v: %d services differ from the API server, such as %s", key, ready, n, first)
		}
	}
}
