package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const fakeNetns = "/run/netns/handoff-test"

// handingTunnel is a test tunnel serving the hand-off socket in dir with
// one pod whose outbound listener is a real loopback socket.
func handingTunnel(t *testing.T, dir string) (*Tunnel, net.Listener) {
	t.Helper()
	old := testTunnel(t)
	old.cfg.StateDir = dir
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	old.pods[fakeNetns] = &pod{netns: fakeNetns, cookie: 7, listeners: []podListener{{"outbound", "127.0.0.1:15001", l}}}
	hl, err := listenHandoff(HandoffPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hl.Close() })
	old.closeSockets = func() { hl.Close() }
	go old.serveHandoff(hl)
	return old, l
}

func successor(t testing.TB, dir string) *Tunnel {
	t.Helper()
	nt := testTunnel(t)
	nt.cfg.StateDir = dir
	return nt
}

func roundTrip(t *testing.T, c net.Conn, s net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v; want %q", buf, err, msg)
	}
}

// TestHandoff_QueuedConnectionSurvives: a connection in the listener's
// queue, never accepted by the old tunnel, is accepted by the new one
// after the old one released the socket and closed its descriptor; the
// client wrote before and writes after, and is never reset. The old one's
// sockets in the state directory are gone, so the new one can bind them.
func TestHandoff_QueuedConnectionSurvives(t *testing.T) {
	dir := t.TempDir()
	old, l := handingTunnel(t, dir)
	queued, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	if _, err := queued.Write([]byte("before ")); err != nil {
		t.Fatal(err)
	}

	nt := successor(t, dir)
	pred := nt.takeOver()
	if pred == nil {
		t.Fatal("no predecessor found")
	}
	nl := nt.takeListener(fakeNetns, 7, "127.0.0.1:15001")
	if nl == nil {
		t.Fatalf("inherited %+v: no outbound listener of the pod", nt.inherited)
	}
	defer nl.Close()
	if nl.Addr().String() != l.Addr().String() {
		t.Fatalf("inherited listener at %s, want the old one's %s", nl.Addr(), l.Addr())
	}
	if got := nt.takeListener(fakeNetns, 8, "127.0.0.1:15001"); got != nil {
		t.Fatal("a listener was given for another netns cookie")
	}
	if err := pred.finish(nt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.released:
	case <-time.After(5 * time.Second):
		t.Fatal("old tunnel did not release")
	}
	if _, err := l.Accept(); err == nil {
		t.Fatal("old tunnel's listener still accepts after the hand-off")
	}
	if _, err := os.Stat(HandoffPath(dir)); !os.IsNotExist(err) {
		t.Fatalf("hand-off socket left behind by the old tunnel: %v", err)
	}

	s, err := nl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, len("before "))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "before " {
		t.Fatalf("bytes queued before the hand-off: %q, %v", buf, err)
	}
	roundTrip(t, queued, s, "after")
	roundTrip(t, s, queued, "answer")
	// And a connection made after the hand-off goes to the new one.
	later, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	s2, err := nl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

// TestHandoff_SuccessorDiesHalfWay: a new tunnel that received the
// sockets but died before it said it took them costs nothing: the old one
// keeps its listener and serves the next successor.
func TestHandoff_SuccessorDiesHalfWay(t *testing.T) {
	dir := t.TempDir()
	old, l := handingTunnel(t, dir)
	first := successor(t, dir)
	pred := first.takeOver()
	if pred == nil {
		t.Fatal("no predecessor found")
	}
	pred.conn.Close() // dies before "taken"
	first.closeInherited()

	stillAccepts(t, l, "after an abandoned hand-off")
	select {
	case <-old.released:
		t.Fatal("old tunnel released for a successor that never took over")
	default:
	}

	second := successor(t, dir)
	pred = second.takeOver()
	if pred == nil {
		t.Fatal("the old tunnel no longer hands over after an abandoned hand-off")
	}
	defer second.closeInherited()
	if err := pred.finish(second); err != nil {
		t.Fatal(err)
	}
	<-old.released
}

// TestHandoff_NoPredecessor: no socket, or one nobody serves (its tunnel
// was killed), means binding for ourselves; the stale file is replaced.
func TestHandoff_NoPredecessor(t *testing.T) {
	dir := t.TempDir()
	if p := successor(t, dir).takeOver(); p != nil {
		t.Fatal("predecessor found in an empty state directory")
	}
	// A socket file whose process died: bound, never listened on.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: HandoffPath(dir)}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	if p := successor(t, dir).takeOver(); p != nil {
		t.Fatal("predecessor found behind a dead socket")
	}
	hl, err := listenHandoff(HandoffPath(dir))
	if err != nil {
		t.Fatalf("stale hand-off socket not replaced: %v", err)
	}
	hl.Close()
	if _, err := listenHandoff(filepath.Join(dir, "x", HandoffFile)); err == nil {
		t.Fatal("hand-off socket bound in a directory that does not exist")
	}
}

// TestHandoff_OtherVersionRefused: a request in another protocol version
// gets nothing, and the old tunnel keeps serving.
func TestHandoff_OtherVersionRefused(t *testing.T) {
	dir := t.TempDir()
	old, _ := handingTunnel(t, dir)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: HandoffPath(dir), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := writeMsg(c, handoffMsg{Op: "take", Version: handoffVersion + 1}); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if m, fds, err := readMsg(c, make([]byte, msgBuf)); err == nil {
		closeFDs(fds)
		t.Fatalf("got %+v with %d sockets for another version", m, len(fds))
	}
	select {
	case <-old.released:
		t.Fatal("released to another version")
	default:
	}
}

// TestHandoff_OtherUserRefused: a process of another user that reaches the
// hand-off socket (its mode and its directory's opened to all) gets no
// socket: the old tunnel checks the peer's credentials.
func TestHandoff_OtherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	// Not t.TempDir: its parent is closed to other users.
	dir, err := os.MkdirTemp("", "kmesh-handoff-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	old, _ := handingTunnel(t, dir)
	// The client is this test binary, run from where that user can.
	bin := filepath.Join(dir, "client.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, HandoffPath(dir)} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=TestHandoff_OtherUserClient$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_SOCKET="+HandoffPath(dir))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid 65534: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused:") {
		t.Fatalf("client as uid 65534 was not refused:\n%s", out)
	}
	select {
	case <-old.released:
		t.Fatal("released to another user")
	default:
	}
}

// TestHandoff_OtherUserClient is the client of TestHandoff_OtherUserRefused,
// run as another user; on its own it does nothing.
func TestHandoff_OtherUserClient(t *testing.T) {
	path := os.Getenv("HANDOFF_TEST_SOCKET")
	if path == "" {
		t.Skip("run by TestHandoff_OtherUserRefused")
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatalf("dial as uid %d: %v", os.Getuid(), err)
	}
	defer c.Close()
	if err := writeMsg(c, handoffMsg{Op: "take", Version: handoffVersion}); err != nil {
		fmt.Println("refused:", err) // closed on us already
		return
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m, fds, err := readMsg(c, make([]byte, msgBuf))
	if err == nil {
		closeFDs(fds)
		t.Fatalf("got %+v with %d sockets as uid %d", m, len(fds), os.Getuid())
	}
	fmt.Println("refused:", err)
}

// manyPods gives a test tunnel n pods of three loopback listeners each (as
// a dual-stack pod has: two outbound, one HBONE) and serves the hand-off
// socket in dir.
func manyPods(tb testing.TB, old *Tunnel, dir string, n int) {
	tb.Helper()
	for i := range n {
		path := fmt.Sprintf("/run/netns/handoff-test-%d", i)
		p := &pod{netns: path, cookie: uint64(1000 + i)}
		for _, addr := range []string{"127.0.0.1:15001", "[::1]:15001", ":15008"} {
			l, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { l.Close() })
			p.listeners = append(p.listeners, podListener{"outbound", addr, l})
		}
		old.pods[path] = p
	}
	hl, err := listenHandoff(HandoffPath(dir))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { hl.Close() })
	old.closeSockets = func() { hl.Close() }
	go old.serveHandoff(hl)
}

// TestHandoff_ManyPods: 120 pods' 360 listeners change hands, each the
// same socket (same address) under its pod's netns and cookie.
func TestHandoff_ManyPods(t *testing.T) {
	dir := t.TempDir()
	old := testTunnel(t)
	old.cfg.StateDir = dir
	manyPods(t, old, dir, 120)
	nt := successor(t, dir)
	pred := nt.takeOver()
	if pred == nil {
		t.Fatal("no predecessor found")
	}
	defer nt.closeInherited()
	for path, p := range old.pods {
		for _, pl := range p.listeners {
			l := nt.inherited[path].listeners[pl.addr]
			if l == nil || l.Addr().String() != pl.l.Addr().String() {
				t.Fatalf("%s %s: inherited %v, want the socket at %s", path, pl.addr, l, pl.l.Addr())
			}
		}
		if nt.inherited[path].cookie != p.cookie {
			t.Fatalf("%s: cookie %d, want %d", path, nt.inherited[path].cookie, p.cookie)
		}
	}
	if err := pred.finish(nt); err != nil {
		t.Fatal(err)
	}
	<-old.released
}

// BenchmarkHandoff_100Pods: one hand-off of 100 pods' 300 listeners, from
// the new tunnel's request to the old one's release (no netns: the pods'
// listeners are loopback sockets of this namespace).
func BenchmarkHandoff_100Pods(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		old := testTunnel(b)
		old.cfg.StateDir = dir
		manyPods(b, old, dir, 100)
		nt := successor(b, dir)
		b.StartTimer()
		pred := nt.takeOver()
		if pred == nil {
			b.Fatal("no predecessor found")
		}
		if err := pred.finish(nt); err != nil {
			b.Fatal(err)
		}
		<-old.released
		b.StopTimer()
		nt.closeInherited()
		b.StartTimer()
	}
}

// TestHandoff_NoStateNoTakeOver: a new tunnel that cannot read the state
// (none written, or another node's) would not know the pods whose sockets
// it got: it does not take over, Run fails, and the old tunnel keeps its
// listeners and serves the next successor.
func TestHandoff_NoStateNoTakeOver(t *testing.T) {
	dir := t.TempDir()
	old, l := handingTunnel(t, dir)
	nt := successor(t, dir)
	nt.view.Store(nil) // testTunnel's state is in memory only; the directory has none
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := nt.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "not taking over") {
		t.Fatalf("Run without a state: %v, want it to refuse to take over", err)
	}
	select {
	case <-old.released:
		t.Fatal("old tunnel released to a successor without a state")
	default:
	}
	stillAccepts(t, l, "after a refused take-over")
}

// stillAccepts connects to the old tunnel's listener l and wants it to
// accept: after, e.g., a hand-off that did not happen.
func stillAccepts(t *testing.T, l net.Listener, after string) {
	t.Helper()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	s, err := l.Accept()
	if err != nil {
		t.Fatalf("old tunnel's listener %s: %v", after, err)
	}
	s.Close()
}
