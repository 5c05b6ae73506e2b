package waypoint

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn is a TCP connection whose reads and writes are raw system calls
// made from the goroutine's own thread, with Go's poller still waiting for
// readiness (syscall.RawConn). A socket is non-blocking, so a read or
// write never sleeps in the kernel; but a write on loopback or a veth runs
// the receiver's network stack inline and often lasts longer than the Go
// scheduler's 20 µs sysmon tick. Through net.Conn every such call enters
// the runtime's syscall state: the first one after the waypoint was idle
// wakes sysmon from its deep sleep and sets it polling every 20 µs again,
// and with one P (--max-procs 1) a call that spans two of its ticks has
// its P taken and handed to another thread, which is woken for it; the
// call's return then waits to get a P back. On a virtual machine where a
// thread switch costs more than the request's own work, those wake-ups
// were most of what the waypoint spent per request. Raw calls keep the P:
// nothing else could have run on it for those microseconds anyway.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The state of the read and of the write in progress, with the
	// callbacks bound once, so a call allocates nothing.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool

	// awaitReply makes the next Write return only once the connection is
	// readable (ExpectReply); awaitFn is
	// its callback.
	awaitReply bool
	awaitFn    func(uintptr) bool
	wrote      bool
}

// newRawConn wraps c when it is a TCP connection; other connections (TLS,
// HBONE streams) are returned as they are.
func newRawConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{TCPConn: tc, rc: rc}
	r.readFn, r.writeFn, r.awaitFn = r.readRaw, r.writeRaw, r.writeAwait
	return r
}

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case err != nil: // closed, or the read deadline passed
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readRaw is the poller's callback: false means "not ready, wait".
func (c *rawConn) readRaw(fd uintptr) bool {
	b := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rn, c.rerr = int(r), e
		return true
	}
}

func (c *rawConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = b, 0, 0
	var err error
	if c.awaitReply && len(b) > 0 {
		c.awaitReply, c.wrote = false, false
		err = c.rc.Read(c.awaitFn)
		if err == nil && c.werr == 0 && c.wn < len(b) {
			// The send buffer filled up: the rest the usual way.
			err = c.rc.Write(c.writeFn)
		}
	} else {
		err = c.rc.Write(c.writeFn)
	}
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
	}
	return n, nil
}

// writeRaw writes until all is sent; false means "the send buffer is
// full, wait".
func (c *rawConn) writeRaw(fd uintptr) bool {
	b := c.wbuf
	for c.wn < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[c.wn])), uintptr(len(b)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// ExpectReply makes the next Write, the last bytes of a request, also wait
// until the connection is readable: the reply's first bytes (or its close)
// have come. The write is made from the poller's read callback, after the
// poller cleared the connection's read readiness and before any reply
// can be sent, so no readiness is lost; and the read that follows finds
// the reply at once, instead of a read right after the write that, the
// peer not having answered yet, returns EAGAIN: one system call less per
// upstream request. Only for a connection whose peer sends nothing
// unasked (an HTTP/1.1 server with no request outstanding) and with no
// unread bytes buffered above it.
func (c *rawConn) ExpectReply() {
	c.wmu.Lock()
	c.awaitReply = true
	c.wmu.Unlock()
}

// writeAwait is the read callback of an ExpectReply write: the first call
// writes and asks the poller to wait for readability; the next, made once
// the connection is readable, ends the wait. If the send buffer fills up
// it ends at once, and Write sends the rest the usual way.
func (c *rawConn) writeAwait(fd uintptr) bool {
	if c.wrote {
		return true
	}
	c.wrote = true
	b := c.wbuf
	for c.wn < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[c.wn])), uintptr(len(b)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true
		default:
			c.werr = e
			return true
		}
	}
	return false
}
