//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// hboneMesh is the hello mesh with a local CA: kmeshd and its tunnel on
// both nodes, every workload enrolled and so HBONE by default.
type hboneMesh struct {
	*mesh
	caFlags []string
	caCert  string // the local CA's files
	caKey   string
	// rootNetns starts the tunnels in the root network namespace (still
	// in the node's cgroup), where the Istio tier's istiod listens.
	rootNetns bool
	kmeshd    map[string]*kmeshd
	tunnels   map[string]*testbed.Process
	stateDirs map[string]string
}

func newHBONEMesh(t *testing.T, workloads []workloadSpec, extraConfig string) *hboneMesh {
	t.Helper()
	m := newMesh(t)
	cfg := m.config("random", workloads) + extraConfig
	return startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg})
}

// startHBONE starts kmeshd and its tunnel on both nodes of m, each node
// with its own config file content; extra flags go to both (such as
// --cert-ttl).
func startHBONE(m *mesh, configs map[string]string, extra ...string) *hboneMesh {
	m.t.Helper()
	certPath, keyPath, _ := m.writeCA("ca")
	h := &hboneMesh{mesh: m, caFlags: append([]string{"--ca-cert", certPath, "--ca-key", keyPath}, extra...),
		caCert: certPath, caKey: keyPath,
		kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{}, stateDirs: map[string]string{}}
	for _, node := range []string{"node-a", "node-b"} {
		cfg := configPath(m, node+".yaml")
		m.writeConfig(cfg, configs[node])
		h.stateDirs[node] = configPath(m, node+"-state")
		h.kmeshd[node] = m.startKmeshdBin(m.kmeshd, node, cfg, h.kmeshdFlags(node)...)
	}
	for _, node := range []string{"node-a", "node-b"} {
		h.tunnels[node] = h.startTunnel(node)
	}
	return h
}

func (h *hboneMesh) kmeshdFlags(node string) []string {
	return append([]string{"--state-dir", h.stateDirs[node]}, h.caFlags...)
}

var (
	tunnelApplied = regexp.MustCompile(`msg="tunnel state applied".* pods=(\d+)`)
	tunnelMetrics = regexp.MustCompile(`msg="metrics served".* metrics=(\S+)`)
)

// startTunnel runs `kmeshd tunnel` on a node as a DaemonSet would: in the
// node's network namespace and in its cgroup, under kmeshd's programs (its
// sockets pass them by their mark). It waits until the tunnel listens in
// the node's pods.
func (h *hboneMesh) startTunnel(node string) *testbed.Process {
	h.t.Helper()
	n := h.nodes[node]
	args := append([]string{"tunnel", "--node", node, "--bpf-dir", n.BPFDir, "--state-dir", h.stateDirs[node], "--log-level", "debug",
		"--metrics-address", "127.0.0.1:0", "--access-log"}, h.caFlags...)
	start := n.StartHost
	if h.rootNetns {
		start = n.StartHostNetwork
	}
	proc, err := start(h.mesh.kmeshd, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { proc.Stop() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if sm := tunnelApplied.FindStringSubmatch(proc.Stderr()); sm != nil && sm[1] != "0" {
			return proc
		}
		select {
		case <-proc.Done():
			h.t.Fatalf("tunnel %s exited: %v\n%s", node, proc.Wait(), proc.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
	}
	h.t.Fatalf("tunnel %s not ready after 20s:\n%s", node, proc.Stderr())
	return nil
}

func requireAll(t *testing.T, what string, rs []result, pod string) {
	t.Helper()
	if len(rs) == 0 {
		t.Fatalf("%s: no results", what)
	}
	for _, r := range rs {
		if r.Error != "" || (pod != "" && r.Pod != pod) {
			t.Fatalf("%s: %v", what, counts(rs))
		}
	}
}

// stopServed stops tr and wants at least min requests, every one answered
// by pod, and a kept-alive client on one connection from start to end (a
// reset would have made it reconnect). It returns the results, their rate
// and the connections used.
func (tr *traffic) stopServed(t *testing.T, pod string, min int) ([]result, float64, int) {
	t.Helper()
	rs, rate := tr.stop(t)
	if len(rs) < min {
		t.Fatalf("%s: only %d requests", tr.name, len(rs))
	}
	conns := map[int]bool{}
	for _, r := range rs {
		if r.Error != "" || r.Pod != pod {
			t.Fatalf("%s: request %d: %+v (%v)", tr.name, r.Seq, r, counts(rs))
		}
		conns[r.Conn] = true
	}
	if tr.name == "keep-alive" && len(conns) != 1 {
		t.Fatalf("kept-alive client used %d connections, want 1 (it was reset)", len(conns))
	}
	return rs, rate, len(conns)
}

// TestHBONE_CrossNodeOverMutualTLS: requests from node-a's client to
// node-b's pods (by pod address, IPv4 and IPv6, and through the service
// address) succeed, and on the underlay between the nodes every pod-to-pod
// segment is to or from port 15008, the handshake is TLS 1.3, and the
// application's bytes never appear.
func TestHBONE_CrossNodeOverMutualTLS(t *testing.T) {
	h := newHBONEMesh(t, helloWorkloads, "")
	cpt := startCapture(t, h.bed.UnderlayNetns())

	rs := h.get("client", "--url", "http://10.1.2.12:8080/", "--count", "5")
	requireAll(t, "client -> hello-2 by IPv4", rs, "hello-2")
	requireEnds(t, rs, "10.1.1.10", "10.1.2.12:8080")
	rs = h.get("client", "--url", "http://[fd00:1:2::12]:8080/", "--count", "3")
	requireAll(t, "client -> hello-2 by IPv6", rs, "hello-2")
	requireEnds(t, rs, "fd00:1:1::10", "[fd00:1:2::12]:8080")
	rs = h.get("client", "--url", "http://10.96.0.10/", "--count", "20")
	requireAll(t, "client -> hello service", rs, "")
	requireEnds(t, rs, "10.1.1.10", "10.96.0.10:80") // tunnelled to hello-2/3 or straight to hello-1

	pkts := cpt.stop()
	tunnelSYNs := requireOnlyTunnel(t, pkts, podAddr, "GET /", "hello-2", "hello-3", "X-Pod")
	t.Logf("%d segments on the underlay, %d tunnel connections", len(pkts), tunnelSYNs)
}

// TestHBONE_SameNodeNotTunnelled: client and hello-1 share node-a; their
// connection stays one hop, never touching port 15008.
func TestHBONE_SameNodeNotTunnelled(t *testing.T) {
	h := newHBONEMesh(t, helloWorkloads, "")
	cpt := startCapture(t, h.nodes["node-a"].NetnsPath)
	requireAll(t, "client -> hello-1", h.get("client", "--url", "http://10.1.1.11:8080/", "--count", "5"), "hello-1")
	var direct int
	for _, p := range cpt.stop() {
		if p.src.Port() == 15008 || p.dst.Port() == 15008 {
			t.Fatalf("same-node request used the tunnel: %s -> %s", p.src, p.dst)
		}
		if p.dst == netip.MustParseAddrPort("10.1.1.11:8080") && p.flags&0x12 == 0x02 {
			direct++
		}
	}
	if direct != 5 {
		t.Fatalf("saw %d direct connections to hello-1, want 5", direct)
	}
	if strings.Contains(h.tunnels["node-a"].Stderr(), `msg=tunnelled`) {
		t.Fatalf("the tunnel carried a same-node connection:\n%s", h.tunnels["node-a"].Stderr())
	}
}

// requireEnds: the client's tunnelled socket looks as if it connected
// straight to the destination: getsockname() is its pod's address (the
// connect hook bound it there, not the tunnel's loopback) and
// getpeername() the address it dialed.
func requireEnds(t *testing.T, rs []result, local, peer string) {
	t.Helper()
	for _, r := range rs {
		l, err := netip.ParseAddrPort(r.Local)
		if err != nil || l.Addr().String() != local {
			t.Errorf("getsockname in the client: %s, want the client pod's address %s", r.Local, local)
		}
		if r.Peer != peer {
			t.Errorf("getpeername in the client: %s, want the destination %s", r.Peer, peer)
		}
	}
}

func podAddr(a netip.Addr) bool {
	for _, c := range []netip.Prefix{cidrA4, cidrA6, cidrB4, cidrB6} {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// TestHBONE_DenyOnPrincipal: a DENY on the client's principal at hello-2.
// When the client's node knows the policy, connect() fails at once. When
// it does not (its config lacks the policy, as a node that does not
// enforce), the destination's tunnel refuses the stream on the client's
// certificate: the client's connection is reset and hello-2's application
// never sees a SYN. hello-1, another principal, passes.
func TestHBONE_DenyOnPrincipal(t *testing.T) {
	m := newMesh(t)
	h := startHBONE(m, map[string]string{"node-a": authzConfig(m, ""), "node-b": authzConfig(m, denyClient)})
	app := startCapture(t, h.pods["hello-2"].NetnsPath)

	rs := h.get("client", "--url", "http://10.1.2.12:8080/", "--count", "3", "--timeout", "3s")
	for _, r := range rs {
		if r.Error == "" {
			t.Fatalf("denied client got an answer from %s", r.Pod)
		}
	}
	for _, p := range app.packets() {
		if p.dst.Port() == 8080 && p.flags&0x12 == 0x02 {
			t.Fatalf("hello-2's application saw a SYN from %s for a denied client", p.src)
		}
	}
	if !strings.Contains(h.tunnels["node-b"].Stderr(), "code=401") {
		t.Fatalf("node-b's tunnel did not answer 401:\n%s", h.tunnels["node-b"].Stderr())
	}
	requireAll(t, "hello-1 (principal hello) -> hello-2", h.get("hello-1", "--url", "http://10.1.2.12:8080/", "--count", "3"), "hello-2")
	var allowed int
	for _, p := range app.stop() {
		if p.dst.Port() == 8080 && p.flags&0x12 == 0x02 {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("hello-2's application saw %d SYNs, want 3 (hello-1's)", allowed)
	}

	// The client's own node enforces the policy too once it knows it:
	// connect() fails at once, nothing is tunnelled.
	m.writeConfig(configPath(m, "node-a.yaml"), authzConfig(m, denyClient))
	h.kmeshd["node-a"].waitVersion(t, 2)
	for _, r := range h.get("client", "--url", "http://10.1.2.12:8080/", "--count", "2") {
		if !strings.Contains(r.Error, "permission denied") {
			t.Fatalf("client of a node that knows the DENY: %+v, want permission denied at connect", r)
		}
	}
}

// TestHBONE_KmeshdRestartsCutNothing: under continuous tunnelled traffic
// from node-a's client to node-b's hello-2 (a new connection per request,
// and one kept-alive connection), both nodes' kmeshd are SIGKILLed and
// restarted three times. The tunnels are other processes: not one request
// fails and the kept-alive connection is never replaced.
func TestHBONE_KmeshdRestartsCutNothing(t *testing.T) {
	h := newHBONEMesh(t, helloWorkloads, "")
	url := []string{"--url", "http://10.1.2.12:8080/"}
	perConn := h.startTraffic("new-connection", url...)
	keepalive := h.startTraffic("keep-alive", append(url, "--keepalive")...)
	for range 3 {
		for _, node := range []string{"node-a", "node-b"} {
			k := h.kmeshd[node]
			if err := k.proc.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-k.proc.Done()
		}
		time.Sleep(300 * time.Millisecond) // new connections while no kmeshd runs
		for _, node := range []string{"node-a", "node-b"} {
			h.kmeshd[node] = h.startKmeshdBin(h.mesh.kmeshd, node, configPath(h.mesh, node+".yaml"), h.kmeshdFlags(node)...)
		}
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	for _, tr := range []*traffic{perConn, keepalive} {
		rs, rate, conns := tr.stopServed(t, "hello-2", 20)
		t.Logf("%s: %d requests, %.0f/s, %d connections", tr.name, len(rs), rate, conns)
	}
	if n := strings.Count(h.tunnels["node-a"].Stderr(), "msg=tunnelled"); n < 20 {
		t.Fatalf("node-a's tunnel carried %d connections, want all of them", n)
	}
}

// TestHBONE_TelemetryPrincipals: a tunnelled connection from client (sa
// client) to hello-2 (sa hello) is counted in Istio's TCP metrics by both
// tunnels, reporter source on node-a and destination on node-b, with both
// principals the handshake proved and connection_security_policy
// mutual_tls, and each tunnel writes an access log line naming both.
// kmeshd counts none of them again, over IPv4 and IPv6, in a pod whose
// net.ipv4.tcp_fwmark_accept is 0 (as in a cluster, where the tunnel's
// container cannot write it).
func TestHBONE_TelemetryPrincipals(t *testing.T) {
	m := newMesh(t)
	cfg := authzConfig(m, "")
	h := startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg})
	out, err := exec.Command("nsenter", "--net="+h.pods["hello-2"].NetnsPath, "cat", "/proc/sys/net/ipv4/tcp_fwmark_accept").Output()
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("hello-2's net.ipv4.tcp_fwmark_accept = %q (%v), want 0: accepted sockets must not inherit the tunnel's mark", out, err)
	}
	requireAll(t, "client -> hello-2", h.get("client", "--url", "http://10.1.2.12:8080/", "--count", "3"), "hello-2")
	requireAll(t, "client -> hello-2 by IPv6", h.get("client", "--url", "http://[fd00:1:2::12]:8080/", "--count", "2"), "hello-2")
	const conns = 5

	const (
		client = `source_principal="spiffe://cluster.local/ns/default/sa/client"`
		hello  = `destination_principal="spiffe://cluster.local/ns/default/sa/hello"`
	)
	for node, reporter := range map[string]string{"node-a": "source", "node-b": "destination"} {
		sm := tunnelMetrics.FindStringSubmatch(h.tunnels[node].Stderr())
		if sm == nil {
			t.Fatalf("tunnel %s: no metrics address in its log", node)
		}
		want := []string{`reporter="` + reporter + `"`, client, hello, `connection_security_policy="mutual_tls"`,
			`source_workload="client"`, `destination_workload="hello-2"`}
		var closed, received float64
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && (closed < conns || received == 0) {
			body := h.tunnelScrape(t, node, sm[1])
			closed = seriesValue(body, "istio_tcp_connections_closed_total", want)
			received = seriesValue(body, "istio_tcp_received_bytes_total", want)
			time.Sleep(100 * time.Millisecond)
		}
		if closed != conns || received == 0 {
			body := h.tunnelScrape(t, node, sm[1])
			t.Fatalf("tunnel %s: closed %v received %v for %v:\n%s", node, closed, received, want, grepLines(body, "istio_tcp_"))
		}
	}
	// kmeshd's kernel counters leave the tunnelled connections to the
	// tunnel: neither the client's connection to the tunnel's loopback
	// listener (node-a) nor hello-2's socket of the tunnel's dial into it
	// (node-b) is counted again. One connection, once per reporter.
	for node, labels := range map[string]map[string]string{
		"node-a": {"source_workload": "client"}, "node-b": {"destination_workload": "hello-2"},
	} {
		for _, metric := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
			if n := metricSum(t, h.kmeshd[node].metrics, metric, labels); n != 0 {
				t.Errorf("kmeshd %s: %s%v = %v, want 0 (the tunnel counts them)", node, metric, labels, n)
			}
		}
	}
	for node, reporter := range map[string]string{"node-a": "source", "node-b": "destination"} {
		var lines int
	drain:
		for {
			select {
			case line := <-h.tunnels[node].Lines():
				if strings.Contains(line, `"msg":"connection"`) && strings.Contains(line, `"reporter":"`+reporter+`"`) &&
					strings.Contains(line, `"src_principal":"spiffe://cluster.local/ns/default/sa/client"`) &&
					strings.Contains(line, `"dst_principal":"spiffe://cluster.local/ns/default/sa/hello"`) &&
					strings.Contains(line, `"security":"mutual_tls"`) {
					lines++
				}
			case <-time.After(2 * time.Second):
				break drain
			}
		}
		if lines != conns {
			t.Fatalf("tunnel %s: %d access log lines with both principals, want %d", node, lines, conns)
		}
	}
}

// seriesValue sums the samples of metric whose labels include every one of
// want, in a Prometheus text exposition.
func seriesValue(body, metric string, want []string) float64 {
	var sum float64
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		var v float64
		fmt.Sscan(f[len(f)-1], &v)
		sum += v
	}
	return sum
}

// tunnelScrape reads a tunnel's /metrics: it listens on loopback in its
// node's network namespace, as a DaemonSet's container would.
func (h *hboneMesh) tunnelScrape(t *testing.T, node, addr string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+h.nodes[node].NetnsPath, "curl", "-sf", "http://"+addr+"/metrics").Output()
	if err != nil {
		t.Fatalf("scrape tunnel %s: %v", node, err)
	}
	return string(out)
}
