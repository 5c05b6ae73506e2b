package tunnel

// The tunnel's own upgrade. A connection the tunnel carries lives in its
// process (TLS and HTTP/2 state), so a new `kmeshd tunnel` does not
// replace the old one: the old hands it its listening sockets and drains.
//
// A tunnel that starts while another serves the same state directory finds
// it on the hand-off socket there and asks for its listeners; the old one
// sends each pod's (loopback:15001, [::]:15008) with SCM_RIGHTS and what
// each one is. Both processes then hold the same kernel sockets: the new
// one accepts on them, and only once it says so does the old one close its
// descriptors. The sockets and their queued connections never close, and
// nothing binds twice (SO_REUSEPORT would give each process a queue of its
// own, and closing the old one's would reset what is queued there). The
// old one then drains (drain.go). If it dies before it answers, the new
// one binds for itself, as with no predecessor.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// HandoffFile is the hand-off socket in the state directory: a Unix
// SOCK_SEQPACKET socket, mode 0600 (root only, as tunnel.sock), served by
// the tunnel that owns the node's listeners.
const HandoffFile = "tunnel-handoff.sock"

// HandoffPath is the hand-off socket in the state directory dir.
func HandoffPath(dir string) string { return filepath.Join(dir, HandoffFile) }

// handoffVersion is the protocol spoken on the hand-off socket; a tunnel
// answers only its own (a later one must still speak this to take over
// from this one).
const handoffVersion = 1

// handoffStep bounds each wait of one side for the other: a hung peer
// costs this, then the old one keeps serving or the new one binds.
const handoffStep = 10 * time.Second

// handoffMsg is one message on the hand-off socket (one SEQPACKET, JSON).
// The new tunnel sends "take"; the old one answers one "pod" per pod, the
// pod's listening sockets riding with it (SCM_RIGHTS) in the order of
// Listeners, then "end"; the new one says "taken" once it accepts on them,
// and the old one, having stopped accepting and closed its sockets (the
// admin socket, this one), says "released".
type handoffMsg struct {
	Op        string            `json:"op"`
	Version   int               `json:"version,omitempty"`
	PID       int               `json:"pid,omitempty"`
	Netns     string            `json:"netns,omitempty"`
	Cookie    uint64            `json:"cookie,omitempty"` // the netns's, so a reused path is not mistaken
	Listeners []handoffListener `json:"listeners,omitempty"`
}

// handoffListener says what one passed socket is.
type handoffListener struct {
	Kind string `json:"kind"` // "outbound" (15001) or "hbone" (15008)
	Addr string `json:"addr"` // as openPod binds it: 127.0.0.1:15001, [::1]:15001, :15008
}

// inheritedPod is a pod's listeners received from the predecessor, until
// openPod takes them.
type inheritedPod struct {
	cookie    uint64
	listeners map[string]net.Listener // by handoffListener.Addr
}

// takeListener returns the listener at addr the predecessor passed for the
// pod at path, if it is still that pod's. Called with handoffMu held
// (syncPods).
func (t *Tunnel) takeListener(path string, cookie uint64, addr string) net.Listener {
	ip := t.inherited[path]
	if ip == nil || ip.cookie != cookie {
		return nil
	}
	l := ip.listeners[addr]
	delete(ip.listeners, addr)
	return l
}

// closeInherited closes what the predecessor passed that no pod of the
// state took: pods that left meanwhile. An outbound connection's reload
// may open a pod (takeListener) at the same time: both hold handoffMu.
func (t *Tunnel) closeInherited() {
	t.handoffMu.Lock()
	defer t.handoffMu.Unlock()
	for path, ip := range t.inherited {
		for _, l := range ip.listeners {
			l.Close()
		}
		delete(t.inherited, path)
	}
}

func writeMsg(c *net.UnixConn, m handoffMsg, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// msgBuf holds one message: a netns path is at most PATH_MAX (4 KiB), the
// rest of a message a few hundred bytes. One per conversation, not per
// message: a hand-off of 100 pods read 64 KiB for each.
const msgBuf = 16 << 10

// readMsg reads one message, into buf (msgBuf bytes), and the descriptors
// that came with it; the caller owns (closes) them.
func readMsg(c *net.UnixConn, buf []byte) (handoffMsg, []int, error) {
	oob := make([]byte, syscall.CmsgSpace(4*16)) // up to 16 descriptors
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var m handoffMsg
	var fds []int
	if oobn > 0 {
		scms, perr := syscall.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return m, nil, perr
		}
		for _, scm := range scms {
			got, perr := syscall.ParseUnixRights(&scm)
			if perr == nil {
				fds = append(fds, got...)
			}
		}
	}
	if err == nil && n == 0 {
		err = errors.New("hand-off socket closed by the peer")
	}
	if err == nil && flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		err = errors.New("hand-off message truncated")
	}
	if err == nil {
		err = json.Unmarshal(buf[:n], &m)
	}
	if err != nil {
		closeFDs(fds)
		return m, nil, err
	}
	return m, fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// predecessor is the tunnel handing its listeners to this one.
type predecessor struct {
	conn *net.UnixConn
	pid  int
}

// takeOver asks the tunnel serving the state directory, if one does, for
// its listeners, and keeps them in t.inherited for openPod. It returns nil
// when there is none, or it died before it sent all (what it sent is kept:
// those sockets live on in this process).
func (t *Tunnel) takeOver() *predecessor {
	path := HandoffPath(t.cfg.StateDir)
	t.inherited = map[string]*inheritedPod{}
	for range 50 {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
				t.log.Warn("hand-off socket unusable; binding for ourselves", "socket", path, "err", err)
			}
			return nil
		}
		pred, err := t.receive(c)
		if err == nil {
			return pred
		}
		c.Close()
		if len(t.inherited) > 0 {
			t.log.Warn("the tunnel handing over stopped half-way; keeping the sockets it sent, binding the rest", "err", err)
			return nil
		}
		// It took the connection but sent nothing: it is handing over to
		// another tunnel, or exiting. Ask again: the socket is then that
		// one's, or gone.
		t.log.Info("tunnel hand-off refused; asking again", "err", err)
		time.Sleep(100 * time.Millisecond)
	}
	t.log.Warn("no tunnel handed over after 50 attempts; binding for ourselves")
	return nil
}

// receive runs the new side of the hand-off up to "end".
func (t *Tunnel) receive(c *net.UnixConn) (*predecessor, error) {
	c.SetDeadline(time.Now().Add(handoffStep))
	buf := make([]byte, msgBuf)
	if err := writeMsg(c, handoffMsg{Op: "take", Version: handoffVersion, PID: os.Getpid()}); err != nil {
		return nil, err
	}
	for {
		m, fds, err := readMsg(c, buf)
		if err != nil {
			return nil, err
		}
		switch m.Op {
		case "end":
			closeFDs(fds)
			return &predecessor{conn: c, pid: m.PID}, nil
		case "pod":
			err = t.adopt(m, fds)
		default:
			closeFDs(fds)
			err = fmt.Errorf("unexpected hand-off message %q", m.Op)
		}
		if err != nil {
			return nil, err
		}
	}
}

// adopt makes listeners of the sockets of one pod's message.
func (t *Tunnel) adopt(m handoffMsg, fds []int) error {
	if len(fds) != len(m.Listeners) {
		closeFDs(fds)
		return fmt.Errorf("hand-off of %s: %d sockets for %d listeners", m.Netns, len(fds), len(m.Listeners))
	}
	ip := &inheritedPod{cookie: m.Cookie, listeners: map[string]net.Listener{}}
	t.inherited[m.Netns] = ip
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), m.Listeners[i].Kind+" "+m.Listeners[i].Addr)
		l, err := net.FileListener(f) // a duplicate; the received one closes below
		f.Close()
		if err != nil {
			closeFDs(fds[i+1:])
			return fmt.Errorf("hand-off of %s %s: %w", m.Netns, m.Listeners[i].Addr, err)
		}
		ip.listeners[m.Listeners[i].Addr] = l
	}
	return nil
}

// finish tells the predecessor this tunnel accepts on its sockets and
// waits until it closed its own and its sockets in the state directory.
func (p *predecessor) finish(t *Tunnel) error {
	defer p.conn.Close()
	p.conn.SetDeadline(time.Now().Add(handoffStep))
	if err := writeMsg(p.conn, handoffMsg{Op: "taken", PID: os.Getpid()}); err != nil {
		return err
	}
	m, fds, err := readMsg(p.conn, make([]byte, msgBuf))
	closeFDs(fds)
	if err == nil && m.Op != "released" {
		err = fmt.Errorf("unexpected hand-off message %q", m.Op)
	}
	return err
}

// listenHandoff binds the hand-off socket, replacing a file nobody serves.
func listenHandoff(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unixpacket"}
	if c, err := net.DialUnix("unixpacket", nil, addr); err == nil {
		c.Close()
		return nil, fmt.Errorf("hand-off socket %s: another tunnel serves it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hand-off socket %s: %w", path, err)
	}
	// Mode 0600 from birth, as the admin socket: the descriptors it
	// hands out are the node's listeners.
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unixpacket", addr)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("hand-off socket %s: %w", path, err)
	}
	return l, nil
}

// serveHandoff answers tunnels that ask for the listeners, one at a time,
// until one took them or l is closed.
func (t *Tunnel) serveHandoff(l *net.UnixListener) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		done := t.handOver(c)
		c.Close()
		if done {
			return
		}
	}
}

// handOver runs the old side of one hand-off; it reports whether the
// listeners changed hands. Until the new tunnel says it took them this
// one accepts as before, so a new tunnel that dies half-way costs nothing.
func (t *Tunnel) handOver(c *net.UnixConn) bool {
	if err := sameUser(c); err != nil {
		t.log.Warn("hand-off request refused", "err", err)
		return false
	}
	c.SetDeadline(time.Now().Add(handoffStep))
	buf := make([]byte, msgBuf)
	m, fds, err := readMsg(c, buf)
	closeFDs(fds)
	if err != nil || m.Op != "take" || m.Version != handoffVersion {
		t.log.Warn("hand-off request refused", "op", m.Op, "version", m.Version, "want_version", handoffVersion, "err", err)
		return false
	}
	log := t.log.With("successor_pid", m.PID)
	// No pod opens or closes while its sockets change hands.
	t.handoffMu.Lock()
	defer t.handoffMu.Unlock()
	if t.stopping {
		return false
	}
	if err := t.sendPods(c); err != nil {
		log.Warn("hand-off failed; still serving", "err", err)
		return false
	}
	m, fds, err = readMsg(c, buf)
	closeFDs(fds)
	if err == nil && m.Op != "taken" {
		err = fmt.Errorf("unexpected hand-off message %q", m.Op)
	}
	if err != nil {
		log.Warn("successor did not take the listeners; still serving", "err", err)
		return false
	}
	t.release()
	if err := writeMsg(c, handoffMsg{Op: "released", PID: os.Getpid()}); err != nil {
		log.Warn("successor gone after it took the listeners", "err", err)
	}
	log.Info("tunnel handed over; draining", "drain_timeout", t.cfg.DrainTimeout)
	close(t.released)
	return true
}

// sameUser checks the peer's credentials (SO_PEERCRED): only a process of
// this one's user gets the node's listeners, even if the socket's mode is
// changed or its directory shared, as the admin socket checks for root.
func sameUser(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer uid %d (pid %d) is not this tunnel's uid %d", cred.Uid, cred.Pid, os.Geteuid())
	}
	return nil
}

// sendPods sends every pod's listeners, then "end".
func (t *Tunnel) sendPods(c *net.UnixConn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for path, p := range t.pods {
		m := handoffMsg{Op: "pod", Netns: path, Cookie: p.cookie}
		var fds []int
		for _, pl := range p.listeners {
			rc, err := pl.l.(*net.TCPListener).SyscallConn()
			if err != nil {
				return err
			}
			// The descriptor stays valid after Control: the listener
			// closes only under t.mu, held here.
			if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
				return err
			}
			m.Listeners = append(m.Listeners, handoffListener{Kind: pl.kind, Addr: pl.addr})
		}
		if err := writeMsg(c, m, fds...); err != nil {
			return fmt.Errorf("send %s: %w", path, err)
		}
	}
	return writeMsg(c, handoffMsg{Op: "end", PID: os.Getpid()})
}

// warm fetches the certificates of the state's pods before this tunnel
// takes the listeners over, so the first connections it accepts do not
// wait for the CA (from istiod, a signing request per service account);
// the old tunnel serves meanwhile. A failure only costs that wait.
func (t *Tunnel) warm(ctx context.Context) {
	if _, err := os.Stat(HandoffPath(t.cfg.StateDir)); err != nil {
		return // nobody to take over from: nothing waits
	}
	s, err := ReadState(t.cfg.StateDir)
	if err != nil || s.Node != t.cfg.Node {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, handoffStep)
	defer cancel()
	seen := map[identity.Identity]bool{}
	for _, p := range s.Pods {
		w := s.Mesh.Workload(p.Workload)
		if w == nil || seen[t.identityOf(w)] {
			continue
		}
		id := t.identityOf(w)
		seen[id] = true
		if _, err := t.cfg.Certs.Certificate(ctx, id); err != nil {
			t.log.Warn("certificate not fetched before the hand-off; the first handshakes fetch it", "identity", id.String(), "err", err)
		}
	}
}
