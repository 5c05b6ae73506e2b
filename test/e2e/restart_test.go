//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func xdstestUID(name string) string {
	return xdstest.Workload{Namespace: "default", Name: name}.UID()
}

// traffic is a client running until stopped, one request per line.
type traffic struct {
	name  string
	proc  *testbed.Process
	start time.Time
}

func (m *mesh) startTraffic(name string, args ...string) *traffic {
	m.t.Helper()
	p, err := m.pods["client"].Start(m.echo, append([]string{"get", "--url", "http://10.96.0.10/", "--count", "0", "--interval", "0s", "--timeout", "3s"}, args...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	return &traffic{name: name, proc: p, start: time.Now()}
}

// stop ends the client and returns its results and its request rate.
func (tr *traffic) stop(t *testing.T) ([]result, float64) {
	t.Helper()
	if err := tr.proc.Stop(); err != nil {
		t.Fatalf("%s client: %v: %s", tr.name, err, tr.proc.Stderr())
	}
	elapsed := time.Since(tr.start).Seconds()
	var rs []result
	for line := range tr.proc.Lines() {
		rs = append(rs, parseResult(t, line))
	}
	return rs, float64(len(rs)) / elapsed
}

func linkProgramID(t *testing.T, dir string) uint32 {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link_km_connect4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(info.Program)
}

// TestRestartAndUpgradeUnderTraffic kills, stops, restarts and upgrades
// node-a's kmeshd, and takes its config file away, while two clients send
// requests through the service address without pause: one opening a new
// connection per request, one on a single kept-alive connection. Not one
// request may fail and the kept-alive connection must never be reset.
func TestRestartAndUpgradeUnderTraffic(t *testing.T) {
	m := newMesh(t)
	upgraded, err := testbed.BuildTags("github.com/kmesh-go/kmesh/cmd/kmeshd", "kmesh_upgrade_test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	m.startKmeshd("node-b", cfg)
	k := m.startKmeshd("node-a", cfg)

	perConn := m.startTraffic("new-connection")
	keepalive := m.startTraffic("keep-alive", "--keepalive")
	var readyTimes []time.Duration
	restart := func(bin string, flags ...string) {
		t.Helper()
		start := time.Now()
		k = m.startKmeshdBin(bin, "node-a", cfg, flags...)
		readyTimes = append(readyTimes, time.Since(start))
	}
	down := func(sig syscall.Signal) {
		t.Helper()
		if err := k.proc.Signal(sig); err != nil {
			t.Fatal(err)
		}
		<-k.proc.Done()
		time.Sleep(200 * time.Millisecond) // connections open while no kmeshd runs
	}

	for range 5 {
		down(syscall.SIGKILL)
		restart(m.kmeshd)
	}
	down(syscall.SIGTERM)
	restart(m.kmeshd)

	// A map of another size cannot be reused: a new one is filled before
	// the programs switch to it.
	down(syscall.SIGTERM)
	restart(m.kmeshd, "--max-endpoints", "100000")
	if !strings.Contains(k.proc.Stderr(), "pinned map differs from this build") {
		t.Fatalf("kmeshd with a new --max-endpoints did not recreate km_endpoint:\n%s", k.proc.Stderr())
	}

	// An endpoint removed while kmeshd is down is gone soon after it starts.
	down(syscall.SIGTERM)
	var noHello3 []workloadSpec
	for _, w := range helloWorkloads {
		if w.name != "hello-3" {
			noHello3 = append(noHello3, w)
		}
	}
	m.writeConfig(cfg, m.config("random", noHello3))
	time.Sleep(200 * time.Millisecond)
	restartAt := time.Now()
	restart(m.kmeshd)
	time.Sleep(300 * time.Millisecond)

	// The config file goes away and comes back: the state stays meanwhile.
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	k.waitLog(t, `msg="config rejected"`, 1)
	time.Sleep(200 * time.Millisecond)
	fileBackAt := time.Now()
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k.waitVersion(t, 2)

	// Upgrade to a build whose programs differ: they replace the old ones
	// behind the pinned links.
	before := linkProgramID(t, k.node.BPFDir)
	if err := k.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	restart(upgraded)
	if after := linkProgramID(t, k.node.BPFDir); after == before {
		t.Fatalf("connect4 program id %d unchanged by the upgrade", after)
	}
	time.Sleep(300 * time.Millisecond)

	rs, rate := perConn.stop(t)
	ka, kaRate := keepalive.stop(t)
	t.Logf("new connection per request: %d requests, %.0f/s; keep-alive: %d requests, %.0f/s", len(rs), rate, len(ka), kaRate)
	t.Logf("restart to ready: %v", readyTimes)
	for name, r := range map[string]float64{"new-connection": rate, "keep-alive": kaRate} {
		if r < 500 {
			t.Errorf("%s client sent %.0f requests/s, want at least 500 for this test to mean something", name, r)
		}
	}
	for _, set := range [][]result{rs, ka} {
		for _, r := range set {
			if r.Error != "" {
				t.Fatalf("request %d failed: %s", r.Seq, r.Error)
			}
		}
	}
	for _, r := range ka {
		if r.Conn != 1 {
			t.Fatalf("keep-alive request %d used connection %d: the first connection was lost", r.Seq, r.Conn)
		}
	}
	// Until the file came back, hello-3 was out of the config.
	var lastHello3 time.Time
	for _, r := range rs {
		at := time.Unix(0, r.At)
		if r.Pod == "hello-3" && at.After(restartAt) && at.Before(fileBackAt) {
			lastHello3 = at
		}
	}
	if d := lastHello3.Sub(restartAt); !lastHello3.IsZero() && d > time.Second {
		t.Fatalf("hello-3, removed while kmeshd was down, got new connections %v after the restart", d)
	}
	t.Logf("last new connection to hello-3 (removed while kmeshd was down): %v after the restart began", max(lastHello3.Sub(restartAt), 0))
	if !strings.Contains(k.proc.Stderr(), "restart=true") {
		t.Fatalf("the upgraded kmeshd did not find the pinned data plane:\n%s", k.proc.Stderr())
	}
}

// TestXdsControlPlaneAwayUnderTraffic takes the xDS control plane away
// while traffic flows, restarts kmeshd while it is away, and brings it
// back: no request fails, the kept-alive connection lives on, and the
// resumed stream still delivers changes.
func TestXdsControlPlaneAwayUnderTraffic(t *testing.T) {
	m := newMesh(t)
	srv := helloXdsServer(t)
	k := m.startXdsKmeshd(srv, "workload")
	perConn := m.startTraffic("new-connection")
	keepalive := m.startTraffic("keep-alive", "--keepalive")

	srv.Stop()
	time.Sleep(500 * time.Millisecond)
	// kmeshd restarts while the control plane is away: the pinned data
	// plane serves; the new daemon waits for its first push.
	if err := k.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-k.proc.Done()
	restarted, err := m.bed.StartRoot(m.kmeshd, "--node", "node-a", "--cgroup", k.node.Cgroup, "--bpf-dir", k.node.BPFDir,
		"--admin-address", "127.0.0.1:0", "--admin-socket", m.adminSocket("node-a"), "--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0",
		"--xds-address", srv.Addr(), "--xds-mode", "workload", "--enroll-netns", m.pods["client"].NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restarted.Stop() })
	time.Sleep(time.Second)
	srv.Restart(t)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(restarted.Stderr(), `msg="kmeshd ready"`) {
		if time.Now().After(deadline) {
			t.Fatalf("kmeshd not ready after the control plane came back:\n%s", restarted.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)

	// The resumed stream delivers changes: hello-2 leaves.
	if err := srv.Addresses.DeleteResource(xdstestUID("hello-2")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	changeAt := time.Now()
	time.Sleep(300 * time.Millisecond)

	rs, rate := perConn.stop(t)
	ka, kaRate := keepalive.stop(t)
	t.Logf("new connection per request: %d requests, %.0f/s; keep-alive: %d requests, %.0f/s", len(rs), rate, len(ka), kaRate)
	for _, set := range [][]result{rs, ka} {
		for _, r := range set {
			if r.Error != "" {
				t.Fatalf("request %d failed: %s", r.Seq, r.Error)
			}
		}
	}
	for _, r := range ka {
		if r.Conn != 1 {
			t.Fatalf("keep-alive request %d used connection %d: the first connection was lost", r.Seq, r.Conn)
		}
	}
	for _, r := range rs {
		if r.Pod == "hello-2" && time.Unix(0, r.At).After(changeAt) {
			t.Fatalf("hello-2 got a new connection after the resumed stream removed it")
		}
	}
}
