package testbed

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

type getResult struct {
	Seq       int    `json:"seq"`
	Pod       string `json:"pod"`
	Peer      string `json:"peer"`
	Local     string `json:"local"`
	ServerSaw string `json:"server_saw"`
	Conn      int    `json:"conn"`
	Error     string `json:"error"`
}

func TestBed_PodsReachEachOther(t *testing.T) {
	bed := NewT(t)
	echo := buildEcho(t)
	a := addNode(t, bed, "a", "10.1.1.0/24", "fd00:1:1::/64")
	b := addNode(t, bed, "b", "10.1.2.0/24", "fd00:1:2::/64")
	client := addPod(t, a, "client", "10.1.1.10", "fd00:1:1::10")
	local := addPod(t, a, "local", "10.1.1.11", "fd00:1:1::11")
	remote := addPod(t, b, "remote", "10.1.2.10", "fd00:1:2::10")
	for _, p := range []*Pod{local, remote} {
		startServer(t, p, echo)
	}

	tests := []struct {
		name   string
		server *Pod
		family int // index into Addrs of both pods
	}{
		{"other node v4", remote, 0},
		{"other node v6", remote, 1},
		{"same node v4", local, 0},
		{"same node v6", local, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := netip.AddrPortFrom(tt.server.Addrs[tt.family], 8080)
			for _, keepalive := range []bool{false, true} {
				args := []string{"get", "--url", "http://" + target.String() + "/", "--count", "3"}
				if keepalive {
					args = append(args, "--keepalive")
				}
				results := runGet(t, client, echo, args...)
				if len(results) != 3 {
					t.Fatalf("keepalive=%v: got %d results, want 3", keepalive, len(results))
				}
				for i, r := range results {
					wantConn := i + 1
					if keepalive {
						wantConn = 1 // one connection carried all three
					}
					if r.Error != "" || r.Pod != tt.server.Name || r.Peer != target.String() || r.Conn != wantConn {
						t.Errorf("keepalive=%v: got %+v, want pod %s, peer %s, conn %d",
							keepalive, r, tt.server.Name, target, wantConn)
					}
					// No NAT anywhere: the server sees the client's own address.
					saw, err := netip.ParseAddrPort(r.ServerSaw)
					if err != nil || saw.Addr() != client.Addrs[tt.family] || saw.String() != r.Local {
						t.Errorf("keepalive=%v: server saw %q, client is %q", keepalive, r.ServerSaw, r.Local)
					}
				}
			}
		})
	}
}

func TestEcho_GetUntilSignal(t *testing.T) {
	bed := NewT(t)
	echo := buildEcho(t)
	n := addNode(t, bed, "a", "10.1.1.0/24")
	client := addPod(t, n, "client", "10.1.1.10")
	server := addPod(t, n, "server", "10.1.1.11")
	startServer(t, server, echo)

	proc, err := client.Start(echo, "get", "--url", "http://10.1.1.11:8080/", "--count", "0", "--interval", "10ms")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		<-proc.Lines()
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		t.Errorf("get after SIGTERM: %v, want exit 0", err)
	}
}

func TestBed_ProcessesRunInTheirCgroup(t *testing.T) {
	bed := NewT(t)
	n := addNode(t, bed, "a", "10.1.1.0/24")
	p := addPod(t, n, "p", "10.1.1.10")
	for _, tt := range []struct {
		name   string
		start  func(string, ...string) (*Process, error)
		cgroup string
	}{
		{"pod", p.Start, n.Cgroup},
		{"host", n.StartHost, n.Cgroup},
		{"root", bed.StartRoot, filepath.Join(bed.cgroupRoot, bed.RunID())},
	} {
		proc, err := tt.start("sleep", "100")
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("/proc", itoa(proc.PID()), "cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		want := "0::/" + strings.TrimPrefix(tt.cgroup, bed.cgroupRoot+"/")
		if !strings.Contains(string(got), want+"\n") {
			t.Errorf("%s: /proc/%d/cgroup = %q, want %q", tt.name, proc.PID(), got, want)
		}
		if err := proc.Stop(); err != nil {
			t.Errorf("%s: stop: %v", tt.name, err)
		}
	}
}

func TestBed_CloseRemovesEverything(t *testing.T) {
	bed := NewT(t)
	n := addNode(t, bed, "a", "10.1.1.0/24", "fd00:1:1::/64")
	p := addPod(t, n, "p", "10.1.1.10", "fd00:1:1::10")
	// kmeshd would create and fill this.
	if err := os.MkdirAll(filepath.Join(n.BPFDir, "maps"), 0o755); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, start := range []func(string, ...string) (*Process, error){p.Start, n.StartHost, bed.StartRoot} {
		// A shell that ignores SIGTERM: Close must escalate to SIGKILL.
		proc, err := start("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
		if err != nil {
			t.Fatal(err)
		}
		<-proc.Lines() // the trap is set
		pids = append(pids, proc.PID())
	}

	start := time.Now()
	if err := bed.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("close took %v", time.Since(start))
	if err := bed.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("process %d still exists (kill 0: %v)", pid, err)
		}
	}
	for _, pattern := range []string{
		filepath.Join(netnsDir, bed.RunID()+"*"),
		filepath.Join(bed.cgroupRoot, bed.RunID()+"*"),
		filepath.Join(bpfRoot, bed.RunID()+"*"),
	} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			t.Errorf("left after close: %v", left)
		}
	}
	if _, err := bed.AddNode("b", netip.MustParsePrefix("10.1.2.0/24")); !errors.Is(err, errClosed) {
		t.Errorf("AddNode after close: got %v, want %v", err, errClosed)
	}
}

func TestBed_AddNodeRejectsBadInput(t *testing.T) {
	bed := NewT(t)
	addNode(t, bed, "a", "10.1.1.0/24")
	tests := []struct {
		name, node string
		cidrs      []string
	}{
		{"duplicate name", "a", []string{"10.1.9.0/24"}},
		{"bad name", "A_1", []string{"10.1.9.0/24"}},
		{"overlap", "b", []string{"10.1.0.0/16"}},
		{"two v4", "b", []string{"10.1.8.0/24", "10.1.9.0/24"}},
		{"not masked", "b", []string{"10.1.9.1/24"}},
		{"underlay", "b", []string{"10.255.0.0/16"}},
		{"none", "b", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cidrs []netip.Prefix
			for _, c := range tt.cidrs {
				cidrs = append(cidrs, netip.MustParsePrefix(c))
			}
			if _, err := bed.AddNode(tt.node, cidrs...); err == nil {
				t.Error("AddNode succeeded")
			}
		})
	}
	// Rejected nodes left nothing behind.
	if left, _ := filepath.Glob(filepath.Join(netnsDir, bed.RunID()+"-n-*")); len(left) != 1 {
		t.Errorf("node namespaces: %v, want only a's", left)
	}
}

func addNode(t *testing.T, bed *Bed, name string, cidrs ...string) *Node {
	t.Helper()
	var ps []netip.Prefix
	for _, c := range cidrs {
		ps = append(ps, netip.MustParsePrefix(c))
	}
	n, err := bed.AddNode(name, ps...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func addPod(t *testing.T, n *Node, name string, addrs ...string) *Pod {
	t.Helper()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	p, err := n.AddPod(name, as...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func buildEcho(t *testing.T) string {
	t.Helper()
	bin, err := Build("./internal/testbed/kmesh-echo")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// startServer starts kmesh-echo serve in p and waits until it listens.
func startServer(t *testing.T, p *Pod, echo string) {
	t.Helper()
	proc, err := p.Start(echo, "serve", "--name", p.Name)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-proc.Lines():
		if !strings.HasPrefix(line, "listening ") {
			t.Fatalf("%s: first line %q, want listening ...", p.Name, line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not listening after 10s; stderr: %s", p.Name, proc.Stderr())
	}
}

// runGet runs kmesh-echo in p and returns its results.
func runGet(t *testing.T, p *Pod, echo string, args ...string) []getResult {
	t.Helper()
	proc, err := p.Start(echo, args...)
	if err != nil {
		t.Fatal(err)
	}
	var results []getResult
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-proc.Lines():
			if !ok {
				if err := proc.Wait(); err != nil {
					t.Fatalf("%v; stderr: %s", err, proc.Stderr())
				}
				return results
			}
			var r getResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			results = append(results, r)
		case <-timeout:
			t.Fatalf("get not done after 30s; stderr: %s", proc.Stderr())
		}
	}
}
