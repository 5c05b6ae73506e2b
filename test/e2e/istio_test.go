//go:build e2e

package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The Istio tier's topology, on pod CIDRs of its own so that the pod IPs
// kmeshd looks up are not also in another test's namespaces:
//
//	node-a: client-a, hello-1, outsider (namespace plain), optout (opted out)
//	node-b: client-b, hello-2, hello-3
//
// Namespace apps is labelled istio.io/dataplane-mode=ambient; Service
// apps/hello has ClusterIP 10.96.71.10, port 80 -> 8080 on app=hello.
const (
	istioAppsNs    = "apps"
	istioPlainNs   = "plain"
	istioClusterIP = "10.96.71.10"
	istioHelloURL  = "http://" + istioClusterIP + "/"
)

var (
	istioCIDRA = netip.MustParsePrefix("10.71.1.0/24")
	istioCIDRB = netip.MustParsePrefix("10.71.2.0/24")
)

type istioPod struct {
	name, node, ip, ns string
	labels             map[string]string
}

var istioPods = []istioPod{
	{"client-a", "node-a", "10.71.1.10", istioAppsNs, map[string]string{"app": "client"}},
	{"hello-1", "node-a", "10.71.1.11", istioAppsNs, map[string]string{"app": "hello"}},
	{"outsider", "node-a", "10.71.1.20", istioPlainNs, map[string]string{"app": "client"}},
	{"optout", "node-a", "10.71.1.21", istioAppsNs, map[string]string{"app": "client", kube.DataplaneModeLabel: kube.ModeNone}},
	{"client-b", "node-b", "10.71.2.10", istioAppsNs, map[string]string{"app": "client"}},
	{"hello-2", "node-b", "10.71.2.12", istioAppsNs, map[string]string{"app": "hello"}},
	{"hello-3", "node-b", "10.71.2.13", istioAppsNs, map[string]string{"app": "hello"}},
}

// newIstioMesh builds the topology, registers it with the API server and
// starts the hello servers. The tools are checked first, so a missing
// build skips (or fails) before anything is built.
func newIstioMesh(t *testing.T, pods []istioPod) (*mesh, *istioEnv) {
	t.Helper()
	findIstioTools(t)
	m := &mesh{t: t, bed: testbed.NewT(t), nodes: map[string]*testbed.Node{}, pods: map[string]*testbed.Pod{}, dir: t.TempDir()}
	var err error
	if m.echo, err = testbed.Build("github.com/kmesh-go/kmesh/internal/testbed/kmesh-echo"); err != nil {
		t.Fatal(err)
	}
	if m.kmeshd, err = testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd"); err != nil {
		t.Fatal(err)
	}
	env := newIstioEnv(t, m.bed)
	m.addNode("node-a", istioCIDRA)
	m.addNode("node-b", istioCIDRB)
	env.node(m.nodes["node-a"])
	env.node(m.nodes["node-b"])
	env.namespace(istioAppsNs, map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient})
	env.namespace(istioPlainNs, nil)
	for _, p := range pods {
		m.addPod(p.node, p.name, p.ip)
		env.pod(m.pods[p.name], p.ns, p.labels)
		if p.labels["app"] == "hello" {
			m.serve(p.name)
		}
	}
	env.service(istioAppsNs, "hello", istioClusterIP, map[string]string{"app": "hello"}, 80, 8080)
	return m, env
}

// waitHello waits until the daemon balances the hello service over want
// (pod IPs).
func waitHello(t *testing.T, k *kmeshd, want ...string) {
	t.Helper()
	k.waitDump(t, "hello endpoints", 30*time.Second, func(d dumpView) string {
		eps := d.endpointsOf(istioClusterIP)
		if eps == nil {
			return "no service " + istioClusterIP
		}
		var got []string
		for _, w := range d.Workloads {
			if slices.Contains(eps, w.Namespace+"/"+w.Name) {
				got = append(got, w.Addresses...)
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			return fmt.Sprintf("endpoints %v, want %v", got, want)
		}
		return ""
	})
}

// TestIstio runs kmeshd under the stock istiod and a real kube-apiserver:
// istiod's workload API gives the mesh, the Kubernetes API the pods to
// enroll.
func TestIstio(t *testing.T) {
	m, env := newIstioMesh(t, istioPods)
	ka := m.startIstioKmeshd(env, "node-a")
	kb := m.startIstioKmeshd(env, "node-b")
	for _, k := range []*kmeshd{ka, kb} {
		waitHello(t, k, "10.71.1.11", "10.71.2.12", "10.71.2.13")
	}
	// The labelled pods of each node are enrolled, by their own kmeshd.
	wantEnrolled := map[*kmeshd][]string{ka: {"client-a", "hello-1"}, kb: {"client-b", "hello-2", "hello-3"}}
	for k, names := range wantEnrolled {
		k.waitDump(t, "enrollment", 30*time.Second, func(d dumpView) string {
			var want []string
			for _, n := range names {
				want = append(want, m.pods[n].NetnsPath)
			}
			sort.Strings(want)
			if !slices.Equal(d.Enrolled, want) {
				return fmt.Sprintf("enrolled %v, want %v", d.Enrolled, want)
			}
			return ""
		})
	}

	t.Run("labelled_pods_on_two_nodes_reach_the_cluster_ip", func(t *testing.T) {
		for _, c := range []struct{ pod, ip string }{{"client-a", "10.71.1.10"}, {"client-b", "10.71.2.10"}} {
			rs := m.get(c.pod, "--url", istioHelloURL, "--count", "60")
			checkOnly(t, rs, "hello-1", "hello-2", "hello-3")
			if n := len(counts(rs)); n != 3 {
				t.Fatalf("%s: answers %v, want all three hello pods", c.pod, counts(rs))
			}
			for _, r := range rs {
				// No proxy on the path: the socket's peer is the service
				// address, and the server sees the client's own address.
				if r.Peer != istioClusterIP+":80" {
					t.Fatalf("%s: getpeername = %s, want %s:80", c.pod, r.Peer, istioClusterIP)
				}
				if !strings.HasPrefix(r.ServerSaw, c.ip+":") {
					t.Fatalf("%s: server saw the client as %s, want %s", c.pod, r.ServerSaw, c.ip)
				}
			}
		}
		for _, name := range []string{"client-a", "client-b"} {
			waitAnnotation(t, env, istioAppsNs, name, kube.RedirectionEnabled)
		}
	})

	t.Run("unlabelled_and_opted_out_pods_are_not_enrolled", func(t *testing.T) {
		d := dumpView{ka.configDump(t)}
		for _, c := range []struct{ pod, ns string }{{"outsider", istioPlainNs}, {"optout", istioAppsNs}} {
			if d.enrolled(m.pods[c.pod].NetnsPath) {
				t.Fatalf("%s enrolled: %v", c.pod, d.Enrolled)
			}
			if got := env.annotation(c.ns, c.pod, kube.RedirectionAnnotation); got != "" {
				t.Fatalf("pod %s: annotation %s = %q, want none", c.pod, kube.RedirectionAnnotation, got)
			}
			rs := m.get(c.pod, "--url", istioHelloURL, "--count", "3", "--timeout", "2s")
			for _, r := range rs {
				if r.Error == "" {
					t.Fatalf("%s reached %s through the cluster IP; want no rewrite", c.pod, r.Pod)
				}
			}
		}
	})

	t.Run("labelling_a_pod_enrolls_it_and_unlabelling_unenrolls_it", func(t *testing.T) {
		outsider := m.pods["outsider"].NetnsPath
		env.labelPod(istioPlainNs, "outsider", kube.DataplaneModeLabel, kube.ModeAmbient)
		ka.waitDump(t, "outsider enrolled", 10*time.Second, func(d dumpView) string {
			if !d.enrolled(outsider) {
				return "not enrolled"
			}
			return ""
		})
		rs := m.get("outsider", "--url", istioHelloURL, "--count", "30")
		checkOnly(t, rs, "hello-1", "hello-2", "hello-3")
		waitAnnotation(t, env, istioPlainNs, "outsider", kube.RedirectionEnabled)

		env.labelPod(istioPlainNs, "outsider", kube.DataplaneModeLabel, "")
		ka.waitDump(t, "outsider unenrolled", 10*time.Second, func(d dumpView) string {
			if d.enrolled(outsider) {
				return "enrolled"
			}
			return ""
		})
		waitAnnotation(t, env, istioPlainNs, "outsider", "")
		for _, r := range m.get("outsider", "--url", istioHelloURL, "--count", "3", "--timeout", "2s") {
			if r.Error == "" {
				t.Fatalf("outsider reached %s through the cluster IP after leaving the mesh", r.Pod)
			}
		}
	})

	whole := t // the restarted kmeshd serves the later subtests too
	t.Run("kmeshd_restart_keeps_pods_enrolled", func(t *testing.T) {
		// A killed kmeshd leaves its pins; the new one must not drop the
		// pods enrolled from Kubernetes while it lists them again.
		perConn := m.istioTraffic("client-a", "new-connection")
		keepalive := m.istioTraffic("client-a", "keep-alive", "--keepalive")
		enrolled := watchEntries(t, ka, bpf.KmeshMapKmManage)
		time.Sleep(300 * time.Millisecond)
		if err := ka.proc.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-ka.proc.Done()
		n := ka.node
		restarted, err := m.bed.StartRoot(m.kmeshd, "--node", n.Name, "--cgroup", n.Cgroup, "--bpf-dir", n.BPFDir,
			"--admin-address", "127.0.0.1:0", "--admin-socket", m.adminSocket(n.Name), "--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0",
			"--log-level", "debug", "--xds-address", env.XDSAddr, "--kubeconfig", env.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		whole.Cleanup(func() { restarted.Stop() })
		deadline := time.Now().Add(30 * time.Second)
		for {
			stderr := restarted.Stderr()
			sm := readyLine.FindStringSubmatch(stderr)
			if sm != nil && strings.Contains(stderr, `msg="kubernetes pods enrolled"`) {
				ka = &kmeshd{proc: restarted, admin: sm[1], node: n}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restarted kmeshd not ready with its pods after 30s:\n%s", tail(stderr, 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		if lo, hi := enrolled.stop(); lo != 2 || hi != 2 {
			t.Fatalf("node-a's enrolled namespaces went %d..%d across the restart, want always 2", lo, hi)
		}
		rs, _ := perConn.stop(t)
		kas, _ := keepalive.stop(t)
		for _, set := range [][]result{rs, kas} {
			for _, r := range set {
				if r.Error != "" {
					t.Fatalf("request %d failed across the kmeshd restart: %s", r.Seq, r.Error)
				}
			}
		}
		if d := (dumpView{ka.configDump(t)}); !d.enrolled(m.pods["client-a"].NetnsPath) || !d.enrolled(m.pods["hello-1"].NetnsPath) {
			t.Fatalf("restarted kmeshd enrolled %v, want client-a and hello-1", d.Enrolled)
		}
		t.Logf("%d + %d requests across the restart, none failed", len(rs), len(kas))
	})

	t.Run("istiod_restart_keeps_connections_and_maps", func(t *testing.T) {
		before := adminMaps(t, ka)
		perConn := m.istioTraffic("client-a", "new-connection")
		keepalive := m.istioTraffic("client-a", "keep-alive", "--keepalive")
		watch := watchEntries(t, ka, bpf.KmeshMapKmEndpoint)

		env.StopIstiod()
		time.Sleep(2 * time.Second) // new connections while istiod is away
		streams := strings.Count(ka.proc.Stderr(), `msg="xds stream established"`)
		env.StartIstiod()
		// kmeshd reconnects (backoff up to 15 s) and resyncs.
		deadline := time.Now().Add(45 * time.Second)
		for strings.Count(ka.proc.Stderr(), `msg="xds stream established"`) == streams {
			if time.Now().After(deadline) {
				t.Fatalf("kmeshd did not reconnect to the restarted istiod:\n%s", tail(ka.proc.Stderr(), 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(2 * time.Second) // the resumed stream's first responses are applied
		minEndpoints, maxEndpoints := watch.stop()
		rs, rate := perConn.stop(t)
		ka2, kaRate := keepalive.stop(t)
		t.Logf("new connection per request: %d requests, %.0f/s; keep-alive: %d requests, %.0f/s; endpoint entries %d..%d",
			len(rs), rate, len(ka2), kaRate, minEndpoints, maxEndpoints)
		for _, set := range [][]result{rs, ka2} {
			for _, r := range set {
				if r.Error != "" {
					t.Fatalf("request %d failed across the istiod restart: %s", r.Seq, r.Error)
				}
			}
		}
		for _, r := range ka2 {
			if r.Conn != 1 {
				t.Fatalf("keep-alive request %d on connection %d: the established connection was lost", r.Seq, r.Conn)
			}
		}
		if minEndpoints != maxEndpoints {
			t.Fatalf("endpoint entries went from %d to %d during the restart: the maps were flushed or changed", maxEndpoints, minEndpoints)
		}
		if after := adminMaps(t, ka); !slices.Equal(before, after) {
			t.Fatalf("maps changed across the istiod restart:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
		}
	})

	t.Run("deleted_pod_gets_no_new_connections", func(t *testing.T) {
		env.deletePod(istioAppsNs, "hello-2", "hello")
		for _, k := range []*kmeshd{ka, kb} {
			waitHello(t, k, "10.71.1.11", "10.71.2.13")
		}
		for _, c := range []string{"client-a", "client-b"} {
			rs := m.get(c, "--url", istioHelloURL, "--count", "60")
			checkOnly(t, rs, "hello-1", "hello-3")
			if n := len(counts(rs)); n != 2 {
				t.Fatalf("%s: answers %v, want hello-1 and hello-3", c, counts(rs))
			}
		}
		// hello-2's own kmeshd un-enrolls it: it is no pod any more.
		kb.waitDump(t, "hello-2 un-enrolled", 10*time.Second, func(d dumpView) string {
			if d.enrolled(m.pods["hello-2"].NetnsPath) {
				return "enrolled"
			}
			return ""
		})
	})
}

// istioTraffic runs a client in pod until stopped.
func (m *mesh) istioTraffic(pod, name string, args ...string) *traffic {
	m.t.Helper()
	p, err := m.pods[pod].Start(m.echo, append([]string{"get", "--url", istioHelloURL, "--count", "0", "--interval", "20ms", "--timeout", "3s"}, args...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	return &traffic{name: name, proc: p, start: time.Now()}
}

// adminMaps returns the daemon's map dump, one line per entry.
func adminMaps(t *testing.T, k *kmeshd) []string {
	t.Helper()
	resp, err := http.Get("http://" + k.admin + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(body)), "\n")
}

// entryWatch polls the number of entries of one of a daemon's pinned maps.
type entryWatch struct {
	stopc    chan struct{}
	done     sync.WaitGroup
	min, max int
}

func watchEntries(t *testing.T, k *kmeshd, name string) *entryWatch {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(k.node.BPFDir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := &entryWatch{stopc: make(chan struct{}), min: 1 << 30}
	w.done.Go(func() {
		defer m.Close()
		for {
			if n, err := countEntries(m); err == nil {
				w.min, w.max = min(w.min, n), max(w.max, n)
			}
			select {
			case <-w.stopc:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	return w
}

func (w *entryWatch) stop() (int, int) {
	close(w.stopc)
	w.done.Wait()
	return w.min, w.max
}

// pinnedMaps are a kmeshd's endpoint and backend maps, opened from their
// pins to watch them from outside.
type pinnedMaps struct{ endpoint, backend *ebpf.Map }

func openPinnedMaps(t *testing.T, dir string) pinnedMaps {
	t.Helper()
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	return pinnedMaps{endpoint: open(bpf.KmeshMapKmEndpoint), backend: open(bpf.KmeshMapKmBackend)}
}

func countEntries(m *ebpf.Map) (int, error) {
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// hasEndpoint reports whether an endpoint entry points at the backend with
// IPv4 address ip.
func (p pinnedMaps) hasEndpoint(ip netip.Addr) (bool, error) {
	want := binary.NativeEndian.Uint32(ip.AsSlice()) // the map holds network byte order
	ids := map[uint32]bool{}
	var id uint32
	var bv bpf.KmeshBackendValue
	it := p.backend.Iterate()
	for it.Next(&id, &bv) {
		if bv.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) != 0 && bv.Addr4 == want {
			ids[id] = true
		}
	}
	if err := it.Err(); err != nil {
		return false, err
	}
	var k bpf.KmeshEndpointKey
	var v bpf.KmeshEndpointValue
	eit := p.endpoint.Iterate()
	for eit.Next(&k, &v) {
		if ids[v.BackendId] {
			return true, nil
		}
	}
	return false, eit.Err()
}
