//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// txBytes is what a pod's eth0 has sent so far.
func txBytes(t *testing.T, m *mesh, pod string) int64 {
	t.Helper()
	return devTxBytes(t, m, pod, "eth0")
}

// devTxBytes is what a pod's device has sent so far.
func devTxBytes(t *testing.T, m *mesh, pod, dev string) int64 {
	t.Helper()
	ns := filepath.Base(m.pods[pod].NetnsPath)
	out, err := exec.Command("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev).Output()
	if err != nil {
		t.Fatalf("ip -n %s link: %v", ns, err)
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link: %q: %v", out, err)
	}
	return links[0].Stats64.TX.Bytes
}

type sendLine struct {
	Sent         int64  `json:"sent"`
	Received     int64  `json:"received"`
	SentHash     string `json:"sent_sha256"`
	ReceivedHash string `json:"received_sha256"`
	Error        string `json:"error"`
	Filled       int64  `json:"filled"`     // tcp-send --fill
	FillError    string `json:"fill_error"` // tcp-send --fill
}

func (m *mesh) tcpSend(t *testing.T, args ...string) sendLine {
	t.Helper()
	var last sendLine
	for _, l := range runLines(t, m, "client", append([]string{"tcp-send"}, args...)...) {
		if strings.Contains(l, `"holding"`) {
			continue
		}
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("tcp-send: %q: %v", l, err)
		}
	}
	return last
}

func (m *mesh) tcpServe(t *testing.T, pod string, args ...string) {
	t.Helper()
	p, err := m.pods[pod].Start(m.echo, append([]string{"tcp-serve"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	if line := <-p.Lines(); !strings.HasPrefix(line, "listening") {
		t.Fatalf("tcp-serve in %s: %q: %s", pod, line, p.Stderr())
	}
}

// TestSameNodeAcceleration moves data between enrolled sockets of one node
// socket to socket (kmeshd --accelerate), and checks it behaves exactly as
// plain TCP does, which is what the same connection to another node still
// uses. Acceleration is off by default, because a receiver reading with
// splice(2) would not see redirected data; the default is checked too.
func TestSameNodeAcceleration(t *testing.T) {
	m := newMesh(t)
	for _, p := range []string{"hello-1", "hello-2"} {
		m.tcpServe(t, p, "--listen", "[::]:9000", "--mode", "echo")
		m.tcpServe(t, p, "--listen", "[::]:9004", "--mode", "echo-splice")
		m.tcpServe(t, p, "--listen", "[::]:9001", "--mode", "reset")
		m.tcpServe(t, p, "--listen", "[::]:9002", "--mode", "reply", "--reply", "777")
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	m.startKmeshd("node-b", cfg)
	accessLog := filepath.Join(m.dir, "access-a.log")
	ka := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--accelerate", "--access-log", "--access-log-file", accessLog)

	const size = 32 << 20
	sameNode := map[string]string{"ipv4 (to a dual-stack listener)": "10.1.1.11", "ipv6": "[fd00:1:1::11]"}
	for name, addr := range sameNode {
		t.Run("same_node_"+name, func(t *testing.T) {
			before := txBytes(t, m, "client")
			r := m.tcpSend(t, "--addr", addr+":9000", "--bytes", strconv.Itoa(size), "--random")
			tx := txBytes(t, m, "client") - before
			if r.Error != "" || r.Sent != size || r.Received != size || r.SentHash != r.ReceivedHash {
				t.Fatalf("32 MiB echo: %+v, want it back intact", r)
			}
			if tx > size/8 {
				t.Fatalf("client's eth0 sent %d bytes for a %d-byte echo: the data went through TCP/IP, not socket to socket", tx, size)
			}
			t.Logf("32 MiB each way intact; client's eth0 sent %d bytes", tx)
		})
	}
	// The receiver's namespace says how much it may hold: here 8 MiB, not
	// the 32 MiB hello-1 inherits from this machine.
	t.Run("receiver_that_stops_reading", func(t *testing.T) { m.stalledReceiver(t, 8<<20, accessLog) })
	t.Run("other_node_uses_tcp", func(t *testing.T) {
		before := txBytes(t, m, "client")
		r := m.tcpSend(t, "--addr", "10.1.2.12:9000", "--bytes", strconv.Itoa(size), "--random")
		tx := txBytes(t, m, "client") - before
		if r.Error != "" || r.Received != size || r.SentHash != r.ReceivedHash {
			t.Fatalf("32 MiB echo to another node: %+v", r)
		}
		if tx < size {
			t.Fatalf("client's eth0 sent %d bytes for %d to another node", tx, size)
		}
	})

	// Half-close, reset and a dead peer: the same outcome on the accelerated
	// (same node) and the plain (other node) path.
	for _, tc := range []struct{ name, port, want string }{
		{"half_close_then_reply", "9002", ""},
		{"reset_by_peer", "9001", "connection reset by peer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, addr := range []string{"10.1.1.11", "10.1.2.12"} {
				r := m.tcpSend(t, "--addr", addr+":"+tc.port, "--bytes", "5000")
				if tc.want == "" && (r.Error != "" || r.Received != 777) {
					t.Fatalf("to %s: %+v, want the 777-byte reply after our half-close", addr, r)
				}
				if tc.want != "" && !strings.Contains(r.Error, tc.want) {
					t.Fatalf("to %s: error %q, want %q", addr, r.Error, tc.want)
				}
			}
		})
	}
	// A server that defers accept (TCP_DEFER_ACCEPT) has no established
	// socket to redirect into until the client's first bytes reach it by
	// TCP: the bytes the client writes after those must not overtake them
	// (the receiver reads what was redirected to it first).
	t.Run("first_bytes_before_the_peer_is_up", func(t *testing.T) {
		m.tcpServe(t, "hello-1", "--listen", "[::]:9005", "--mode", "echo", "--defer-accept")
		for i := range 5 {
			r := m.tcpSend(t, "--addr", "10.1.1.11:9005", "--bytes", strconv.Itoa(4<<20), "--random")
			if r.Error != "" || r.Received != 4<<20 || r.SentHash != r.ReceivedHash {
				t.Fatalf("echo %d: %+v, want the 4 MiB back in order", i, r)
			}
		}
	})
	peerDies := func(t *testing.T) map[string]string {
		outcome := map[string]string{}
		for _, pod := range []string{"hello-1", "hello-2"} {
			srv, err := m.pods[pod].Start(m.echo, "tcp-serve", "--listen", "[::]:9003", "--mode", "echo")
			if err != nil {
				t.Fatal(err)
			}
			<-srv.Lines()
			addr := map[string]string{"hello-1": "10.1.1.11", "hello-2": "10.1.2.12"}[pod]
			cli, err := m.pods["client"].Start(m.echo, "tcp-send", "--addr", addr+":9003", "--bytes", "100000", "--hold", "1s")
			if err != nil {
				t.Fatal(err)
			}
			<-cli.Lines() // holding
			srv.Signal(syscall.SIGKILL)
			<-srv.Done()
			var r sendLine
			for l := range cli.Lines() {
				json.Unmarshal([]byte(l), &r)
			}
			outcome[pod] = classify(r)
			time.Sleep(100 * time.Millisecond)
		}
		return outcome
	}
	var accelerated map[string]string
	t.Run("peer_dies", func(t *testing.T) {
		accelerated = peerDies(t)
		if accelerated["hello-1"] != accelerated["hello-2"] {
			t.Fatalf("a dead peer: accelerated %q, plain TCP to another node %q", accelerated["hello-1"], accelerated["hello-2"])
		}
	})

	t.Run("off_by_default", func(t *testing.T) {
		ka.proc.Stop()
		m.startKmeshd("node-a", cfg)
		before := txBytes(t, m, "client")
		r := m.tcpSend(t, "--addr", "10.1.1.11:9004", "--bytes", strconv.Itoa(size), "--random")
		if tx := txBytes(t, m, "client") - before; r.SentHash != r.ReceivedHash || r.Received != size || tx < size {
			t.Fatalf("by default, to a splicing receiver: %+v, eth0 sent %d bytes; want plain TCP, intact", r, tx)
		}
		if plain := peerDies(t); plain["hello-1"] != accelerated["hello-1"] {
			t.Fatalf("a dead peer on one node: %q accelerated, %q on plain TCP", accelerated["hello-1"], plain["hello-1"])
		}
	})
}

// stalledReceiver sends to a same-node receiver that accepts and does not
// read (kmeshd --accelerate on node-a): non-blocking writes must stop with
// EAGAIN, as on plain TCP, once the receiver holds what TCP would let it
// hold (its namespace's tcp_rmem[2], the largest receive buffer autotuning
// gives) plus what the sender's TCP send buffer takes after its fallback
// (tcp_wmem[2]) and one redirected message; without a bound they went on
// until the node's tcp_mem ran out (~1.5 GiB here, then ENOMEM). Then the
// receiver reads and gets every byte in order, and the sender, blocked
// meanwhile, finishes 8 MiB more.
//
// rmemMax, unless 0, is set as hello-1's tcp_rmem[2] for the test. With
// node-a's access log, the connection's record must count every byte the
// client sent, redirected and by TCP.
func (m *mesh) stalledReceiver(t *testing.T, rmemMax int64, accessLog string) {
	if rmemMax != 0 {
		old := sysctlTCPMem(t, m, "hello-1", "tcp_rmem")
		set := func(v [3]int64) {
			p, err := m.pods["hello-1"].Start("/usr/sbin/sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.tcp_rmem=%d %d %d", v[0], v[1], v[2]))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Wait(); err != nil {
				t.Fatalf("sysctl tcp_rmem in hello-1: %v: %s", err, p.Stderr())
			}
		}
		set([3]int64{old[0], old[1], rmemMax})
		defer set(old)
	}
	rmem := sysctlTCPMem(t, m, "hello-1", "tcp_rmem")[2]
	wmem := sysctlTCPMem(t, m, "client", "tcp_wmem")[2]
	bound := rmem + wmem + 2<<20 // 2 MiB: one redirected message (<= ~0.5 MiB) and TCP's own queue
	readAfter := filepath.Join(m.dir, "stalled-read")
	srv, err := m.pods["hello-1"].Start(m.echo, "tcp-serve", "--listen", "[::]:9006", "--mode", "hold", "--read-after", readAfter)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if l := <-srv.Lines(); !strings.HasPrefix(l, "listening") {
		t.Fatalf("tcp-serve: %q: %s", l, srv.Stderr())
	}
	before := txBytes(t, m, "client")
	// Stop at bound + 16 MiB: main got there without an error, and went on
	// to ENOMEM at gigabytes.
	cli, err := m.pods["client"].Start(m.echo, "tcp-send", "--addr", "10.1.1.11:9006", "--random",
		"--bytes", strconv.Itoa(8<<20), "--fill", strconv.FormatInt(bound+16<<20, 10))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Stop()
	var filled sendLine
	select {
	case l := <-cli.Lines():
		if err := json.Unmarshal([]byte(l), &filled); err != nil || !strings.Contains(l, `"filled"`) {
			t.Fatalf("tcp-send: %q, want the fill's line: %s", l, cli.Stderr())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("tcp-send: no fill line after 60s: %s", cli.Stderr())
	}
	tx := txBytes(t, m, "client") - before
	t.Logf("non-blocking writes took %d bytes, then %q (receiver's tcp_rmem max %d, sender's tcp_wmem max %d); client's eth0 sent %d bytes",
		filled.Filled, filled.FillError, rmem, wmem, tx)
	if filled.FillError != syscall.EAGAIN.Error() || filled.Filled > bound {
		t.Errorf("a sender to a receiver that does not read: %d bytes taken, then %q; want EAGAIN within %d bytes",
			filled.Filled, filled.FillError, bound)
	}
	// The bound is TCP's largest, not less: a lagging reader keeps its
	// speed-up, and the bytes up to it went socket to socket.
	if filled.Filled < rmem || tx > filled.Filled/4 {
		t.Errorf("%d bytes taken, %d of them through eth0; want at least %d (tcp_rmem[2]), most of them redirected",
			filled.Filled, tx, rmem)
	}
	if err := os.WriteFile(readAfter, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var got, sent sendLine
	for _, p := range []struct {
		proc *testbed.Process
		into *sendLine
	}{{srv, &got}, {cli, &sent}} {
		select {
		case l := <-p.proc.Lines():
			if err := json.Unmarshal([]byte(l), p.into); err != nil {
				t.Fatalf("%q: %v: %s", l, err, p.proc.Stderr())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no result 60s after the receiver started reading: %s", p.proc.Stderr())
		}
	}
	if sent.Error != "" || got.Error != "" || sent.Sent != filled.Filled+8<<20 || got.Received != sent.Sent ||
		got.ReceivedHash != sent.SentHash {
		t.Fatalf("sent %+v, received %+v: want all %d bytes in order", sent, got, filled.Filled+8<<20)
	}
	if accessLog == "" {
		return
	}
	// Istio's direction: what the source sent is what the destination
	// received.
	var rec map[string]any
	for deadline := time.Now().Add(10 * time.Second); rec == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, _ := os.ReadFile(accessLog)
		for _, l := range strings.Split(string(data), "\n") {
			var r map[string]any
			if json.Unmarshal([]byte(l), &r) == nil && r["reporter"] == "source" && r["dst_addr"] == "10.1.1.11:9006" {
				rec = r
			}
		}
	}
	if rec == nil || rec["bytes_received"] != float64(sent.Sent) || rec["bytes_sent"] != float64(0) {
		t.Fatalf("access log record of the connection: %v, want bytes_received %d (redirected and by TCP), bytes_sent 0", rec, sent.Sent)
	}
}

// sysctlTCPMem is a pod's net.ipv4.<name> (tcp_rmem, tcp_wmem): minimum,
// default, maximum.
func sysctlTCPMem(t *testing.T, m *mesh, pod, name string) [3]int64 {
	t.Helper()
	p, err := m.pods[pod].Start("/bin/cat", "/proc/sys/net/ipv4/"+name)
	if err != nil {
		t.Fatal(err)
	}
	line := <-p.Lines()
	p.Wait()
	f := strings.Fields(line)
	var v [3]int64
	if len(f) != 3 {
		t.Fatalf("%s in %s: %q", name, pod, line)
	}
	for i := range v {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			t.Fatalf("%s in %s: %q", name, pod, line)
		}
		v[i] = n
	}
	return v
}

// classify reduces an exchange to what an application would notice. Which
// of EPIPE, ECONNRESET or ENOTCONN (shutdown after the reset) comes first
// depends on timing, on plain TCP too.
func classify(r sendLine) string {
	switch {
	case r.Error == "":
		return "ok"
	case strings.Contains(r.Error, "reset"), strings.Contains(r.Error, "broken pipe"),
		strings.Contains(r.Error, "not connected"):
		return "peer gone"
	}
	return "error: " + r.Error
}

// TestAccelerationStaysInItsPod runs the same loopback connections in two
// enrolled pods of one node (kmeshd --accelerate): each pod's client
// 127.0.0.1:45000-45019 to its own server on 127.0.0.1:9000, all held open
// at once. The 4-tuples are equal in both pods; only the network namespace
// tells the connections apart. Each client must get its own pod's answer,
// never the other's (with sockets keyed by 4-tuple alone, one pod got 13 of
// its 20 answers from the other pod's server). Loopback is still
// accelerated.
//
// The servers defer accept (TCP_DEFER_ACCEPT), so a connection's server
// side is established at its first data, not at the handshake: both pods'
// clients connect, then one pod's clients send, then the other's. Sockets
// join the sockhash when established, so with the 4-tuple alone as key the
// first pod's clients and the second pod's servers would hold the keys, and
// the clash would happen on every connection, not only when two handshakes
// happen to interleave.
func TestAccelerationStaysInItsPod(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--accelerate")

	const conns = 20
	pods := []string{"client", "hello-1"} // in the order they connect
	// The servers answer with different sizes, so a client can tell whose
	// answer it got: both would add up to 3333.
	answer := map[string]int64{"client": 1111, "hello-1": 2222}
	clients := map[string]*testbed.Process{}
	lines := func(pod string, want int, what string) []string {
		var out []string
		timeout := time.After(30 * time.Second)
		for len(out) < want {
			select {
			case l, ok := <-clients[pod].Lines():
				if !ok {
					t.Fatalf("%s: tcp-send ended after %d of %d %s lines: %s", pod, len(out), want, what, clients[pod].Stderr())
				}
				out = append(out, l)
			case <-timeout:
				t.Fatalf("%s: %d of %d %s lines after 30s: %s", pod, len(out), want, what, clients[pod].Stderr())
			}
		}
		return out
	}
	for _, pod := range pods {
		m.tcpServe(t, pod, "--listen", "127.0.0.1:9000", "--mode", "reply", "--defer-accept",
			"--reply", strconv.FormatInt(answer[pod], 10))
	}
	for _, pod := range pods {
		p, err := m.pods[pod].Start(m.echo, "tcp-send", "--addr", "127.0.0.1:9000", "--bytes", "100",
			"--count", strconv.Itoa(conns), "--parallel", "--local-port", "45000",
			"--wait-for", filepath.Join(m.dir, "send-"+pod))
		if err != nil {
			t.Fatal(err)
		}
		clients[pod] = p
		for _, l := range lines(pod, conns, "holding") {
			if !strings.Contains(l, `"holding"`) {
				t.Fatalf("%s: %q, want every connection established before any is used", pod, l)
			}
		}
	}
	// All 40 connections are open. The pod that connected last sends
	// first: each connection 100 bytes, then it reads the answer.
	for i := len(pods) - 1; i >= 0; i-- {
		pod := pods[i]
		if err := os.WriteFile(filepath.Join(m.dir, "send-"+pod), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		got := map[int64]int{}
		for _, l := range lines(pod, conns, "result") {
			var r sendLine
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("%s: %q: %v", pod, l, err)
			}
			if r.Error != "" {
				t.Errorf("%s: %q", pod, l)
			}
			got[r.Received]++
		}
		if got[answer[pod]] != conns {
			t.Errorf("%s: answers by size %v, want all %d of %d bytes (its own server's); %d is the other pod's, %d both",
				pod, got, conns, answer[pod], 3333-answer[pod], 3333)
		}
	}
	if t.Failed() {
		return
	}

	// Loopback inside a pod is still accelerated: 32 MiB echoed over lo
	// with few bytes through the device.
	const size = 32 << 20
	m.tcpServe(t, "client", "--listen", "127.0.0.1:9001", "--mode", "echo")
	before := devTxBytes(t, m, "client", "lo")
	r := m.tcpSend(t, "--addr", "127.0.0.1:9001", "--bytes", strconv.Itoa(size), "--random")
	tx := devTxBytes(t, m, "client", "lo") - before
	if r.Error != "" || r.Sent != size || r.Received != size || r.SentHash != r.ReceivedHash {
		t.Fatalf("32 MiB echo over loopback: %+v, want it back intact", r)
	}
	if tx > size/8 {
		t.Fatalf("lo sent %d bytes for a %d-byte echo: loopback in a pod is no longer accelerated", tx, size)
	}
	t.Logf("32 MiB each way over loopback intact; lo sent %d bytes", tx)
}

// TestAccelerationAcrossRestart restarts node-a's kmeshd --accelerate
// (killed, then the upgrade build) between a connection's handshake and its
// data: the connection, which joined the sockhash under the first kmeshd,
// moves its 32 MiB socket to socket under the second, intact (a socket
// keeps the sk_msg program it joined with; the pinned maps it uses stay).
// A connection made after the restart is bounded as before.
func TestAccelerationAcrossRestart(t *testing.T) {
	m := newMesh(t)
	upgraded, err := testbed.BuildTags("github.com/kmesh-go/kmesh/cmd/kmeshd", "kmesh_upgrade_test")
	if err != nil {
		t.Fatal(err)
	}
	m.tcpServe(t, "hello-1", "--listen", "[::]:9000", "--mode", "echo")
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--accelerate")

	const size = 32 << 20
	send := filepath.Join(m.dir, "send-after-restart")
	cli, err := m.pods["client"].Start(m.echo, "tcp-send", "--addr", "10.1.1.11:9000", "--bytes", strconv.Itoa(size),
		"--random", "--wait-for", send)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Stop()
	if l := <-cli.Lines(); !strings.Contains(l, `"holding"`) {
		t.Fatalf("tcp-send: %q: %s", l, cli.Stderr())
	}
	before := linkProgramID(t, m.nodes["node-a"].BPFDir, "link_km_skmsg")
	k.proc.Signal(syscall.SIGKILL)
	<-k.proc.Done()
	m.startKmeshdBin(upgraded, "node-a", cfg, "--accelerate")
	if after := linkProgramID(t, m.nodes["node-a"].BPFDir, "link_km_skmsg"); after == before {
		t.Fatalf("km_skmsg is still program %d after the restart", before)
	}

	tx := txBytes(t, m, "client")
	if err := os.WriteFile(send, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var r sendLine
	for l := range cli.Lines() {
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("tcp-send: %q: %v", l, err)
		}
	}
	tx = txBytes(t, m, "client") - tx
	if r.Error != "" || r.Sent != size || r.Received != size || r.SentHash != r.ReceivedHash {
		t.Fatalf("32 MiB echo on a connection from before the restart: %+v, want it back intact", r)
	}
	if tx > size/8 {
		t.Fatalf("client's eth0 sent %d bytes for a %d-byte echo on a connection from before the restart: not socket to socket", tx, size)
	}
	t.Logf("32 MiB each way intact on a connection from before the restart; client's eth0 sent %d bytes", tx)
	t.Run("receiver_that_stops_reading", func(t *testing.T) { m.stalledReceiver(t, 0, "") })
}
