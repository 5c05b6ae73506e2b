package tunnel

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// Mark is the SO_MARK of every socket the tunnel makes: the programs let
// such sockets pass untouched (no redirect, no policy at the SYN, no
// telemetry of their own), as ztunnel's mark 0x539 does in iptables.
const Mark = int(bpf.KmeshKmTunnelConstKM_TUNNEL_MARK)

// inNetns runs f on an OS thread that is in the network namespace at
// path; the sockets f makes belong to that namespace for good.
func inNetns(path string, f func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer target.Close()
	return inNetnsHandle(target, f)
}

// ownNetns is the process's network namespace, opened once: a thread that
// entered a pod's goes back to it. (Every thread but those inNetns holds
// is in it.)
var ownNetns = sync.OnceValues(func() (netns.NsHandle, error) { return netns.GetFromPath("/proc/self/ns/net") })

// inNetnsHandle is inNetns with the namespace already open: a dial per
// tunnelled connection costs two setns(2) and no open(2). If the thread
// cannot go back to the process's namespace it stays locked, and Go
// discards it when f's goroutine ends.
func inNetnsHandle(target netns.NsHandle, f func() error) error {
	orig, err := ownNetns()
	if err != nil {
		return fmt.Errorf("netns of this process: %w", err)
	}
	runtime.LockOSThread()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: enter: %w", target, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("netns %s: return to own netns: %w", target, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// markControl sets the tunnel's mark on a socket before it binds or
// connects.
func markControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark)
	})
	if err != nil {
		return err
	}
	return serr
}

// listenIn opens a marked TCP listener in the namespace at path.
func listenIn(path, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(path, func() error {
		lc := net.ListenConfig{Control: markControl}
		var err error
		l, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, path, err)
	}
	return l, nil
}

// dialIn makes a marked TCP connection from the namespace ns.
func dialIn(ctx context.Context, ns netns.NsHandle, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetnsHandle(ns, func() error {
		d := net.Dialer{Control: markControl}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}
