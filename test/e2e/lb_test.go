//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

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
  addresses: ["10.96.0.10"]
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
  addresses: ["%s"]
  node: %s
  netns: %s
  locality: region-1/%s
`, w.name, app, m.pods[w.name].Addrs[0], w.node, m.pods[w.name].NetnsPath, w.zone)
	}
	return b.String()
}

func TestLB_LocalityAffinityOutlier(t *testing.T) {
	m := newMesh(t)
	m.addNode("node-c", netip.MustParsePrefix("10.1.3.0/24"), netip.MustParsePrefix("fd00:1:3::/64"))
	m.addPod("node-c", "hello-4", "10.1.3.14", "fd00:1:3::14")
	servers := map[string]*testbed.Process{}
	serve := func(pod string) {
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
		servers[pod] = proc
	}
	serve("hello-4")

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
		if err := servers["hello-4"].Stop(); err != nil {
			t.Fatal(err)
		}
		// Until hello-4 has failed 3 times, some connects fail.
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "2s")
		fails := 0
		for _, r := range rs {
			if r.Error != "" {
				fails++
			}
		}
		if fails > 3 {
			t.Fatalf("%d connects failed, want at most 3 before the ejection", fails)
		}
		// Ejected: every new connection succeeds.
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "2s")
		checkOnly(t, rs, "hello-1", "hello-2", "hello-3")
		// It returns after the ejection time.
		serve("hello-4")
		time.Sleep(4 * time.Second)
		rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		checkOnly(t, rs, allHello[0], allHello[1], allHello[2], "hello-4")
		if counts(rs)["hello-4"] == 0 {
			t.Fatalf("hello-4 did not return after its ejection: %v", counts(rs))
		}
	})
}
