//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// lbWorkloads spread hello over three zones of one region: hello-1 beside
// the client in zone-a (node-a), hello-2 and hello-3 in zone-b (node-b),
// hello-4 in zone-c (node-c).
var lbWorkloads = []struct{ name, app, node, zone string }{
	{"client", "client", "node-a", "zone-a"},
	{"hello-1", "hello", "node-a", "zone-a"},
	{"hello-2", "hello", "node-b", "zone-b"},
	{"hello-3", "hello", "node-b", "zone-b"},
	{"hello-4", "hello", "node-c", "zone-c"},
}

// lbConfig renders the mesh file: service hello with the given extra
// service fields (YAML lines, indented two spaces), and the workloads of
// lbWorkloads whose name is not in gone.
func (m *mesh) lbConfig(extra string, gone ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `services:
- name: hello
  namespace: default
  addresses: ["10.96.0.10", "fd00:96::10"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: hello}
%sworkloads:
`, extra)
	for _, w := range lbWorkloads {
		app := w.app
		for _, g := range gone {
			if g == w.name {
				app = "gone"
			}
		}
		fmt.Fprintf(&b, `- name: %s
  labels: {app: %s}
  addresses: ["%s", "%s"]
  node: %s
  netns: %s
  locality: region-1/%s
`, w.name, app, m.pods[w.name].Addrs[0], m.pods[w.name].Addrs[1], w.node, m.pods[w.name].NetnsPath, w.zone)
	}
	return b.String()
}

// newLBMesh is newMesh with a third node, node-c (zone-c), serving hello-4.
// It returns hello-4's server and a function that starts one in a pod.
func newLBMesh(t *testing.T) (*mesh, *testbed.Process, func(pod string) *testbed.Process) {
	m := newMesh(t)
	m.addNode("node-c", netip.MustParsePrefix("10.1.3.0/24"), netip.MustParsePrefix("fd00:1:3::/64"))
	m.addPod("node-c", "hello-4", "10.1.3.14", "fd00:1:3::14")
	serve := func(pod string) *testbed.Process {
		t.Helper()
		proc, err := m.pods[pod].Start(m.echo, "serve", "--name", pod)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-proc.Lines():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not listening", pod)
		}
		return proc
	}
	return m, serve("hello-4"), serve
}

func TestLB_LocalityAffinityOutlier(t *testing.T) {
	m, hello4, serve := newLBMesh(t)

	cfg := configPath(m, "mesh.yaml")
	failover := "  loadBalancing: {routingPreference: [region, zone], localityMode: failover}\n"
	m.writeConfig(cfg, m.lbConfig(failover))
	ka := m.startKmeshd("node-a", cfg)
	version := uint64(1)
	apply := func(content string) {
		t.Helper()
		m.writeConfig(cfg, content)
		version++
		ka.waitVersion(t, version)
	}

	t.Run("prefer_close_keeps_connections_in_zone", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "50")
		checkOnly(t, rs, "hello-1")
		e := explain(t, ka)
		if !strings.HasPrefix(e.Service.Priority, "rank 2 of failover [region zone]") {
			t.Fatalf("/explain priority %q", e.Service.Priority)
		}
		for _, ep := range e.Endpoints {
			if ep.Eligible != (ep.Workload == "default/hello-1") {
				t.Fatalf("/explain endpoint %s eligible=%v %v", ep.Workload, ep.Eligible, ep.Reasons)
			}
		}
	})

	t.Run("failover_to_next_zone_within_one_connect", func(t *testing.T) {
		apply(m.lbConfig(failover, "hello-1"))
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		checkOnly(t, rs, "hello-2", "hello-3", "hello-4")
		if c := counts(rs); c["hello-4"] != 0 && c["hello-2"]+c["hello-3"] == 0 {
			t.Fatalf("answers %v", c)
		}
	})

	t.Run("strict_refuses_when_nothing_local", func(t *testing.T) {
		apply(m.lbConfig("  loadBalancing: {routingPreference: [region, zone], localityMode: strict}\n", "hello-1"))
		start := time.Now()
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "5", "--timeout", "3s")
		for _, r := range rs {
			if !strings.Contains(r.Error, "connection refused") {
				t.Fatalf("strict with no endpoint in zone-a: %+v, want connection refused", r)
			}
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("5 refused connects took %s, want at once", d)
		}
		apply(m.lbConfig("  loadBalancing: {routingPreference: [region, zone], localityMode: strict}\n"))
		checkOnly(t, m.get("client", "--url", "http://10.96.0.10/", "--count", "20"), "hello-1")
	})

	t.Run("client_ip_affinity_holds_then_expires", func(t *testing.T) {
		apply(m.lbConfig("  sessionAffinity: {timeoutSeconds: 2}\n"))
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "100")
		if c := counts(rs); len(c) != 1 {
			t.Fatalf("100 new connections of one client went to %v, want one backend", c)
		}
		if e := explain(t, ka); e.Affinity == nil || e.Affinity.Workload != "default/"+rs[0].Pod {
			t.Fatalf("/explain affinity %+v, want default/%s", e.Affinity, rs[0].Pod)
		}
		// After the timeout the client is balanced afresh: over 8 expiries
		// it lands on more than one backend (all the same: (1/4)^7).
		seen := map[string]bool{rs[0].Pod: true}
		for range 8 {
			time.Sleep(2200 * time.Millisecond)
			r := m.get("client", "--url", "http://10.96.0.10/", "--count", "1")
			seen[r[0].Pod] = true
		}
		if len(seen) < 2 {
			t.Fatalf("after 8 expiries the client only reached %v", seen)
		}
	})

	t.Run("reset_endpoint_ejected_and_returns", func(t *testing.T) {
		apply(m.lbConfig("  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 4s, maxEjectionPercent: 50}\n"))
		// hello-4's server goes: its connects are reset (nothing listens).
		if err := hello4.Stop(); err != nil {
			t.Fatal(err)
		}
		// Until hello-4 has failed 3 times, some connects fail.
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "2s")
		fails := failures(rs)
		if fails > 3 {
			t.Fatalf("%d connects failed, want at most 3 before the ejection", fails)
		}
		// Ejected: every new connection succeeds.
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "2s")
		checkOnly(t, rs, "hello-1", "hello-2", "hello-3")
		e := explain(t, ka)
		for _, ep := range e.Endpoints {
			if (ep.Workload == "default/hello-4") != strings.HasPrefix(ep.Ejected, "ejected by outlier detection") {
				t.Fatalf("/explain endpoint %s: ejected %q", ep.Workload, ep.Ejected)
			}
		}
		if n := metricSum(t, ka.metrics, "kmesh_outlier_ejections_total", map[string]string{"service": "default/hello"}); n != 1 {
			t.Fatalf("kmesh_outlier_ejections_total = %v, want 1", n)
		}
		// It returns after the ejection time.
		hello4 = serve("hello-4")
		time.Sleep(4 * time.Second)
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		checkOnly(t, rs, allHello[0], allHello[1], allHello[2], "hello-4")
		if counts(rs)["hello-4"] == 0 {
			t.Fatalf("hello-4 did not return after its ejection: %v", counts(rs))
		}
	})

	t.Run("black_holed_endpoint_ejected_and_returns", func(t *testing.T) {
		// hello-4's answers to the client vanish: its connects time out.
		blackhole := m.ipBatch(t, "hello-4", "route add blackhole 10.1.1.10/32\n")
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "1s")
		fails := failures(rs)
		if fails > 3 {
			t.Fatalf("%d connects failed, want at most 3 before the ejection", fails)
		}
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "1s")
		checkOnly(t, rs, "hello-1", "hello-2", "hello-3")
		// The timeouts ejected it, as the resets did before.
		e := explain(t, ka)
		for _, ep := range e.Endpoints {
			if (ep.Workload == "default/hello-4") != strings.HasPrefix(ep.Ejected, "ejected by outlier detection") {
				t.Fatalf("/explain endpoint %s: ejected %q", ep.Workload, ep.Ejected)
			}
		}
		if n := metricSum(t, ka.metrics, "kmesh_outlier_ejections_total", map[string]string{"service": "default/hello"}); n != 2 {
			t.Fatalf("kmesh_outlier_ejections_total = %v, want 2 (the reset, then the black hole)", n)
		}
		blackhole.undo("route del blackhole 10.1.1.10/32\n")
		// Its second ejection in a row lasts twice the base (8 s).
		time.Sleep(8 * time.Second)
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		if counts(rs)["hello-4"] == 0 {
			t.Fatalf("hello-4 did not return after its ejection: %v", counts(rs))
		}
	})
}

// explain asks node-a's kmeshd what a connect of client to the service does.
func explain(t *testing.T, k *kmeshd) api.Explanation {
	t.Helper()
	code, body := httpGet(t, "http://"+k.admin+"/explain?source=client&destination="+url.QueryEscape("10.96.0.10:80"))
	if code != 200 {
		t.Fatalf("/explain: %d %s", code, body)
	}
	var e api.Explanation
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// ipBatch runs `ip -batch` with the commands in a pod and returns a handle
// that runs more; cleanup is the test's (the pod goes with the bed).
func (m *mesh) ipBatch(t *testing.T, pod, cmds string) ipPod {
	t.Helper()
	p := ipPod{t: t, m: m, pod: pod}
	p.undo(cmds)
	return p
}

type ipPod struct {
	t   *testing.T
	m   *mesh
	pod string
}

func (p ipPod) undo(cmds string) {
	p.t.Helper()
	f := filepath.Join(p.t.TempDir(), "ip.batch")
	if err := os.WriteFile(f, []byte(cmds), 0o644); err != nil {
		p.t.Fatal(err)
	}
	proc, err := p.m.pods[p.pod].Start("ip", "-batch", f)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		p.t.Fatalf("ip -batch in %s: %v: %s", p.pod, err, proc.Stderr())
	}
}

// TestLB_MaglevMovesOnlyItsShare: 1,000 clients (source addresses of one
// pod) keep their backends across runs, and when one of four backends goes
// only about a quarter of them move.
func TestLB_MaglevMovesOnlyItsShare(t *testing.T) {
	m, _, _ := newLBMesh(t)
	var batch strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&batch, "addr add fd00:1:1::1:%x/128 dev lo\n", i)
	}
	m.ipBatch(t, "client", batch.String())
	// One route for them all on node-a's bridge: a neighbour entry per
	// client would overflow the kernel's neighbour table (1,024 entries).
	route := "route add fd00:1:1::1:0/112 via fd00:1:1::10\n"
	m.ipBatch(t, "hello-1", route)
	proc, err := m.nodes["node-a"].StartHost("ip", "-6", "route", "add", "fd00:1:1::1:0/112", "via", "fd00:1:1::10")
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		t.Fatalf("route on node-a: %v: %s", err, proc.Stderr())
	}
	cfg := configPath(m, "mesh.yaml")
	maglev := "  loadBalancing: {mode: maglev}\n"
	m.writeConfig(cfg, m.lbConfig(maglev))
	ka := m.startKmeshd("node-a", cfg)
	run := func() map[int]string {
		t.Helper()
		rs := m.get("client", "--url", "http://[fd00:96::10]/", "--count", "1000", "--bind-from", "fd00:1:1::1:0")
		out := map[int]string{}
		for _, r := range rs {
			if r.Error != "" {
				t.Fatalf("client %d (%s): %s; answers before: %v", r.Seq, r.Local, r.Error, counts(rs))
			}
			out[r.Seq] = r.Pod
		}
		return out
	}
	first := run()
	if c := len(first); c != 1000 {
		t.Fatalf("%d answers, want 1000", c)
	}
	again := run()
	for seq, pod := range first {
		if again[seq] != pod {
			t.Fatalf("client %d went to %s, then to %s: not consistent", seq, pod, again[seq])
		}
	}
	m.writeConfig(cfg, m.lbConfig(maglev, "hello-2"))
	ka.waitVersion(t, 2)
	after := run()
	lost, moved := 0, 0
	for seq, pod := range first {
		switch {
		case pod == "hello-2":
			lost++
		case after[seq] != pod:
			moved++
		}
	}
	t.Logf("1000 clients: %d had hello-2, %d others moved", lost, moved)
	if lost+moved > 1000/4+30 {
		t.Fatalf("%d of 1000 clients moved when one of 4 backends went, want <= %d", lost+moved, 1000/4+30)
	}
	if moved > 30 {
		t.Fatalf("%d clients of the remaining backends moved, want <= 30", moved)
	}
}
