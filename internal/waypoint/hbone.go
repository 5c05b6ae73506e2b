package waypoint

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/kmesh-go/kmesh/internal/hbone"
)

// Serves reports whether dst is a service port (VIP:port) of this
// waypoint, or an address of a workload it serves (podIP:port).
func (p *Proxy) Serves(dst netip.AddrPort) bool {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	s := p.snap.Load()
	return s.byDst[dst] != nil || s.workloads[dst.Addr()] != nil
}

// HBONEConnect is an hbone.Server's Connect hook: a CONNECT to a service's
// VIP:port or a served workload's podIP:port (what kmeshd's tunnel sends,
// as ztunnel does; or this
// waypoint's own address and a service's port, mapped by port as on the
// plaintext ports) becomes a connection of the engine, from the client's verified
// identity (the principal its L7 authorization policies see, as Istio's
// waypoint reads %DOWNSTREAM_PEER_URI_SAN%). A target this waypoint does
// not serve is refused with 400 before the stream opens.
func (p *Proxy) HBONEConnect(_ context.Context, r *hbone.Request) (net.Conn, error) {
	dst, err := r.Target()
	if err != nil {
		return nil, err
	}
	peer := Peer{Addr: r.PeerAddr, Principal: strings.TrimPrefix(r.Peer.String(), "spiffe://"), MutualTLS: true}
	// A client that names the endpoint it balanced to (this waypoint's
	// own address and the service's port) is mapped as on the plaintext
	// ports.
	own := dst.Addr() == r.LocalAddr.Addr().Unmap()
	if !p.Serves(dst) && !(own && len(p.snap.Load().byPort[dst.Port()]) > 0) {
		return nil, hbone.Reject(http.StatusBadRequest, fmt.Errorf("%s is no service port of this waypoint", dst))
	}
	up, down, err := socketPair()
	if err != nil {
		return nil, err
	}
	if p.Serves(dst) {
		p.log.Debug("hbone stream", "authority", r.Authority, "principal", peer.Principal)
		p.ServeConn(down, dst, peer)
	} else if !p.servePort(down, dst.Port(), peer) {
		up.Close()
		down.Close()
		return nil, hbone.Reject(http.StatusBadRequest, fmt.Errorf("%s: no single service on port %d", dst, dst.Port()))
	}
	return up, nil
}

// socketPair is a connected pair of Unix stream sockets: unlike net.Pipe
// each end can half-close (the client's END_STREAM reaches the engine as
// EOF) and both take deadlines (protocol detection uses one).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conn := func(fd int, name string) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		return net.FileConn(f)
	}
	a, err := conn(fds[0], "hbone-stream")
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	b, err := conn(fds[1], "waypoint-stream")
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}
