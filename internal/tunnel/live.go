package tunnel

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/telemetry"
)

// live is the set of connections the tunnel carries now, for
// /connections. Each keeps the tunnel's socket on the application's side
// (the accepted one outbound, the one it dialed inbound), whose TCP_INFO
// gives the bytes the kernel moved so far without touching the data path.
type live struct {
	mu    sync.Mutex
	conns map[liveKey]*liveConn
}

// liveKey names a connection in both of its reports: direction, the
// application's or peer's address, the target, and when the tunnel took it.
type liveKey struct {
	dir            Direction
	client, target netip.AddrPort
	start          time.Time
}

type liveConn struct {
	ev   Event // the Open report
	sock *net.TCPConn
}

func keyOf(ev Event) liveKey {
	return liveKey{dir: ev.Direction, client: ev.Client, target: ev.Target, start: ev.Start}
}

// track starts listing an open connection; sock is the tunnel's socket to
// the application.
func (l *live) track(ev Event, sock net.Conn) {
	tc, ok := sock.(*net.TCPConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		l.conns = map[liveKey]*liveConn{}
	}
	l.conns[keyOf(ev)] = &liveConn{ev: ev, sock: tc}
}

// forget stops listing the connection ev reports the end of.
func (l *live) forget(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, keyOf(ev))
}

// resetAll resets the application's socket of every connection carried:
// the application sees its connection broken, never ended.
func (l *live) resetAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		reset(c.sock)
	}
}

// Connections lists the tunnelled connections open now, oldest first, in
// /connections' form: the workloads as the mesh names them, both proven
// identities, and the application's bytes from the source's side.
func (t *Tunnel) Connections() []api.Connection {
	t.live.mu.Lock()
	conns := make([]*liveConn, 0, len(t.live.conns))
	for _, c := range t.live.conns {
		conns = append(conns, c)
	}
	t.live.mu.Unlock()
	slices.SortFunc(conns, func(a, b *liveConn) int { return a.ev.Start.Compare(b.ev.Start) })
	out := make([]api.Connection, 0, len(conns))
	for _, c := range conns {
		l := t.labels(c.ev)
		conn := api.Connection{
			Source:      api.Peer{Workload: workloadKey(l.SourceWorkloadNamespace, l.SourceWorkload), Address: c.ev.Client.String()},
			Destination: api.Peer{Workload: workloadKey(l.DestinationWorkloadNamespace, l.DestinationWorkload), Address: c.ev.Target.String()},
			Start:       c.ev.Start.UTC(),
			Tunnel: &api.ConnTunnel{Direction: string(c.ev.Direction), Peer: c.ev.Peer.String(),
				SourcePrincipal: c.ev.Source.String(), DestinationPrincipal: c.ev.Destination.String()},
		}
		info, err := tcpInfo(c.sock)
		if err != nil {
			continue // closed meanwhile
		}
		conn.State = telemetry.TCPState(info.State)
		conn.BytesSent, conn.BytesReceived = appBytes(c.ev.Direction, info)
		out = append(out, conn)
	}
	return out
}

// appBytes gives the application's bytes from the client's side, read on
// the tunnel's socket to the application: outbound that socket was
// accepted from the client (what it received the client sent); inbound
// the tunnel dialed the server (what it sent the client sent). An
// active opener's acknowledged bytes count its SYN, which is no payload.
func appBytes(dir Direction, info *unix.TCPInfo) (sent, received uint64) {
	if dir == Outbound {
		return info.Bytes_received, info.Bytes_acked
	}
	acked := info.Bytes_acked
	if acked > 0 {
		acked-- // our SYN
	}
	return acked, info.Bytes_received
}

func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		info *unix.TCPInfo
		ierr error
	)
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return nil, err
	}
	return info, ierr
}
