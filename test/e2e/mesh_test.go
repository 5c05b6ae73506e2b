//go:build e2e

// Package e2e runs Kmesh end to end: real kmeshd processes on test-bed nodes
// built from network namespaces, real eBPF programs in this kernel, real
// HTTP traffic between pods. Run as root: go test -tags e2e ./test/e2e/...
package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// result is one line of `kmesh-echo get`.
type result struct {
	Seq       int    `json:"seq"`
	Pod       string `json:"pod"`
	Peer      string `json:"peer"`
	Local     string `json:"local"`
	ServerSaw string `json:"server_saw"`
	Conn      int    `json:"conn"`
	Error     string `json:"error"`
	At        int64  `json:"at"` // Unix nanoseconds
	Status    int    `json:"status"`
	Path      string `json:"path"`
	Millis    int64  `json:"ms"`
	Body      string `json:"body"`
	// Headers of the answer, with --print-headers.
	Headers map[string]string `json:"headers"`
}

var (
	cidrA4 = netip.MustParsePrefix("10.1.1.0/24")
	cidrA6 = netip.MustParsePrefix("fd00:1:1::/64")
	cidrB4 = netip.MustParsePrefix("10.1.2.0/24")
	cidrB6 = netip.MustParsePrefix("fd00:1:2::/64")
)

// mesh is the topology of examples/hello.yaml: node-a with client, outsider
// (not in the mesh) and hello-1; node-b with hello-2 and hello-3.
type mesh struct {
	t      testing.TB
	bed    *testbed.Bed
	echo   string
	kmeshd string
	nodes  map[string]*testbed.Node
	pods   map[string]*testbed.Pod
	dir    string
}

// workloadSpec is one workload of a generated config file.
type workloadSpec struct {
	name, app, node string
	addrs           []string
	weight          int
}

var helloWorkloads = []workloadSpec{
	{"client", "client", "node-a", []string{"10.1.1.10", "fd00:1:1::10"}, 1},
	{"hello-1", "hello", "node-a", []string{"10.1.1.11", "fd00:1:1::11"}, 1},
	{"hello-2", "hello", "node-b", []string{"10.1.2.12", "fd00:1:2::12"}, 1},
	{"hello-3", "hello", "node-b", []string{"10.1.2.13", "fd00:1:2::13"}, 1},
}

// newBareMesh is a test-bed with kmeshd and kmesh-echo built and no node
// yet.
func newBareMesh(t testing.TB) *mesh {
	t.Helper()
	m := &mesh{t: t, bed: testbed.NewT(t), nodes: map[string]*testbed.Node{}, pods: map[string]*testbed.Pod{}, dir: t.TempDir()}
	var err error
	if m.echo, err = testbed.Build("github.com/kmesh-go/kmesh/internal/testbed/kmesh-echo"); err != nil {
		t.Fatal(err)
	}
	if m.kmeshd, err = testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd"); err != nil {
		t.Fatal(err)
	}
	return m
}

// newWaypointMesh is newBareMesh and a built kmesh-waypoint.
func newWaypointMesh(t testing.TB) (*mesh, string) {
	t.Helper()
	m := newBareMesh(t)
	wpBin, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmesh-waypoint")
	if err != nil {
		t.Fatal(err)
	}
	return m, wpBin
}

func newMesh(t testing.TB) *mesh {
	t.Helper()
	m := newBareMesh(t)
	m.addNode("node-a", cidrA4, cidrA6)
	m.addNode("node-b", cidrB4, cidrB6)
	for _, w := range helloWorkloads {
		m.addPod(w.node, w.name, w.addrs...)
	}
	m.addPod("node-a", "outsider", "10.1.1.20", "fd00:1:1::20")
	for _, name := range []string{"hello-1", "hello-2", "hello-3"} {
		m.serve(name)
	}
	return m
}

func (m *mesh) addNode(name string, cidrs ...netip.Prefix) {
	n, err := m.bed.AddNode(name, cidrs...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.nodes[name] = n
}

func (m *mesh) addPod(node, name string, addrs ...string) {
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	p, err := m.nodes[node].AddPod(name, as...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.pods[name] = p
}

// serve starts kmesh-echo serve in a pod and waits until it listens.
func (m *mesh) serve(pod string) {
	m.t.Helper()
	proc, err := m.pods[pod].Start(m.echo, "serve", "--name", pod)
	if err != nil {
		m.t.Fatal(err)
	}
	select {
	case line := <-proc.Lines():
		if !strings.HasPrefix(line, "listening ") {
			m.t.Fatalf("%s: first line %q, want listening ...", pod, line)
		}
	case <-time.After(10 * time.Second):
		m.t.Fatalf("%s: not listening after 10s: %s", pod, proc.Stderr())
	}
}

// config renders a mesh file: service hello (selector app=hello) over the
// given workloads, with each workload's netns the test-bed pod's.
func (m *mesh) config(mode string, workloads []workloadSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, `services:
- name: hello
  namespace: default
  addresses: ["10.96.0.10", "fd00:96::10"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: hello}
  loadBalancing: {mode: %s}
workloads:
`, mode)
	for _, w := range workloads {
		fmt.Fprintf(&b, `- name: %s
  namespace: default
  labels: {app: %s}
  addresses: ["%s"]
  node: %s
  netns: %s
  weight: %d
`, w.name, w.app, strings.Join(w.addrs, `", "`), w.node, m.pods[w.name].NetnsPath, w.weight)
	}
	return b.String()
}

// writeConfig replaces the file at path atomically, as an editor or a
// Kubernetes ConfigMap update does.
func (m *mesh) writeConfig(path, content string) {
	m.t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		m.t.Fatal(err)
	}
}

// kmeshd is a running daemon of one node.
type kmeshd struct {
	proc    *testbed.Process
	admin   string
	socket  string // the admin socket, for changes
	metrics string // address of /metrics
	node    *testbed.Node
}

var (
	readyLine   = regexp.MustCompile(`msg="kmeshd ready".* admin=(\S+)`)
	metricsAddr = regexp.MustCompile(`msg="kmeshd ready".* metrics=(\S+)`)
)

// startKmeshd runs kmeshd for node with the config file and waits until it
// is ready, returning its admin address.
func (m *mesh) startKmeshd(node, config string) *kmeshd {
	m.t.Helper()
	return m.startKmeshdBin(m.kmeshd, node, config)
}

// startKmeshdBin is startKmeshd with another kmeshd binary and more flags.
func (m *mesh) startKmeshdBin(bin, node, config string, flags ...string) *kmeshd {
	m.t.Helper()
	n := m.nodes[node]
	args := append([]string{"--node", node, "--config", config,
		"--cgroup", n.Cgroup, "--bpf-dir", n.BPFDir, "--admin-address", "127.0.0.1:0", "--admin-socket", m.adminSocket(node),
		"--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0", "--log-level", "debug"}, flags...)
	proc, err := m.bed.StartRoot(bin, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() {
		proc.Stop()
		// The data plane outlives kmeshd by design; the test removes it.
		if out, err := runCleanup(m.kmeshd, n.BPFDir); err != nil {
			m.t.Errorf("kmeshd cleanup: %v: %s", err, out)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if sm := readyLine.FindStringSubmatch(proc.Stderr()); sm != nil {
			k := &kmeshd{proc: proc, admin: sm[1], socket: m.adminSocket(node), node: n}
			if mm := metricsAddr.FindStringSubmatch(proc.Stderr()); mm != nil {
				k.metrics = mm[1]
			}
			return k
		}
		select {
		case <-proc.Done():
			m.t.Fatalf("kmeshd %s exited: %v\n%s", node, proc.Wait(), proc.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
	}
	m.t.Fatalf("kmeshd %s not ready after 20s:\n%s", node, proc.Stderr())
	return nil
}

// adminSocket is where the node's kmeshd serves its admin socket: in the
// test's directory, so tests running at once never share one.
func (m *mesh) adminSocket(node string) string { return filepath.Join(m.dir, node+"-admin.sock") }

// configDump fetches /config_dump.
func (k *kmeshd) configDump(t *testing.T) api.ConfigDump {
	t.Helper()
	resp, err := http.Get("http://" + k.admin + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var d api.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("config dump %q: %v", body, err)
	}
	return d
}

// waitVersion waits until kmeshd has applied config version v.
func (k *kmeshd) waitVersion(t *testing.T, v uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if k.configDump(t).Version >= v {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("kmeshd %s did not apply config version %d in 10s:\n%s", k.node.Name, v, k.proc.Stderr())
}

// waitLog waits until the daemon's log holds n lines containing s.
func (k *kmeshd) waitLog(t *testing.T, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(k.proc.Stderr(), s) >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("kmeshd %s: no %d× %q in its log after 10s:\n%s", k.node.Name, n, s, k.proc.Stderr())
}

// get runs `kmesh-echo get` in a pod and returns one result per request.
func (m *mesh) get(pod string, args ...string) []result {
	m.t.Helper()
	proc, err := m.pods[pod].Start(m.echo, append([]string{"get"}, args...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	var results []result
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-proc.Lines():
			if !ok {
				if err := proc.Wait(); err != nil {
					m.t.Fatalf("get in %s: %v: %s", pod, err, proc.Stderr())
				}
				return results
			}
			var r result
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				m.t.Fatalf("get in %s: line %q: %v", pod, line, err)
			}
			results = append(results, r)
		case <-timeout:
			proc.Stop()
			m.t.Fatalf("get in %s not done after 60s: %s", pod, proc.Stderr())
		}
	}
}

// failures counts the requests that got no answer.
func failures(rs []result) int {
	n := 0
	for _, r := range rs {
		if r.Error != "" {
			n++
		}
	}
	return n
}

// counts tallies answering pods; failures count under "error: ...".
func counts(rs []result) map[string]int {
	c := map[string]int{}
	for _, r := range rs {
		if r.Error != "" {
			c["error: "+r.Error]++
			continue
		}
		c[r.Pod]++
	}
	return c
}

func runCleanup(kmeshd, dir string) (string, error) {
	out, err := execOutput(kmeshd, "cleanup", "--bpf-dir", dir)
	return out, err
}

func configPath(m *mesh, name string) string { return filepath.Join(m.dir, name) }
