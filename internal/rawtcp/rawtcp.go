// Package rawtcp reads and writes TCP connections with raw system calls on
// their non-blocking sockets, waiting in Go's poller as net.TCPConn does.
// The HBONE tunnel and the waypoint put every socket on a request's path
// through it.
//
// Why: every system call made through the runtime's entersyscall wakes
// Go's sysmon thread if it sleeps (it sleeps while the process is idle,
// which a proxy at 1000 requests/s mostly is); awake, sysmon polls every
// 20 µs until the process is idle again, and with one P it takes the P
// from a write that lasts two polls (a write on loopback or a veth runs the
// receiver's network stack inline) and hands it to another thread, which
// is woken for it. Each of those is a context switch, and on a
// paravirtualised VM a context switch costs more than the request's own
// work: perf of the tunnel and of the waypoint showed sysmon and
// finish_task_switch as their largest items. A raw call on a non-blocking
// socket never blocks, so the runtime loses nothing by not knowing about
// it.
package rawtcp

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Conn is a TCP connection with raw reads and writes.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The read and the write in progress, with the poller's callbacks
	// bound once: a call allocates nothing.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	wwait   bool // wait for room when the socket is full
	writeFn func(uintptr) bool

	// awaitReply makes the next Write return only once the connection
	// is readable (ExpectReply); awaitFn is its callback.
	awaitReply bool
	awaitFn    func(uintptr) bool
	wrote      bool

	// ReadLoop's state, under rmu: whether TCP_INQ is on, and inside
	// the loop the socket and whether its queue was read empty; recvmsg's
	// arguments, kept here so that a read allocates nothing.
	inqSet, inq, looping, armed bool
	drained                     int
	loopFd                      uintptr
	msg                         syscall.Msghdr
	iov                         syscall.Iovec
	cmsg                        [4]uint64 // one cmsghdr and its int, aligned
	// rdeadline is the caller's read deadline in Unix nanoseconds (0:
	// none), which ReadLoop's reset check puts back.
	rdeadline atomic.Int64
}

// New wraps tc.
func New(tc *net.TCPConn) (*Conn, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &Conn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn, c.awaitFn = c.readRaw, c.writeRaw, c.writeAwait
	return c, nil
}

// Wrap returns c with raw reads and writes if it is a TCP connection, else
// c as it is (TLS, HBONE streams).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := New(tc)
	if err != nil {
		return c
	}
	return rc
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.looping { // ReadLoop's function, which holds rmu
		return c.loopRead(p)
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case err != nil: // closed, or the deadline passed
		return 0, err
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readRaw is the poller's callback: false means not ready, wait.
func (c *Conn) readRaw(fd uintptr) bool {
	p := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
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

// Write writes all of p, waiting in the poller while the socket is full.
func (c *Conn) Write(p []byte) (int, error) {
	return c.write(p, true)
}

// WriteSome writes what the socket takes without waiting for room, and
// returns how much that was: for a caller that serves other sockets too
// and keeps the rest for later.
func (c *Conn) WriteSome(p []byte) (int, error) {
	return c.write(p, false)
}

func (c *Conn) write(p []byte, wait bool) (int, error) {
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr, c.wwait = p, 0, 0, wait
	var err error
	if c.awaitReply && wait && len(p) > 0 {
		c.awaitReply, c.wrote = false, false
		err = c.rc.Read(c.awaitFn)
		if err == nil && c.werr == 0 && c.wn < len(p) {
			// The send buffer filled up: the rest the usual way.
			err = c.rc.Write(c.writeFn)
		}
	} else {
		err = c.rc.Write(c.writeFn)
	}
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.wmu.Unlock()
	if err == nil && errno != 0 {
		err = c.opError("write", errno)
	}
	return n, err
}

// writeRaw writes until all is sent; false means the socket is full,
// wait (unless the write does not wait).
func (c *Conn) writeRaw(fd uintptr) bool {
	if c.send(fd) {
		return !c.wwait
	}
	return true
}

// send writes what is left of wbuf until all is sent or an error is kept
// in werr; true means the socket is full.
func (c *Conn) send(fd uintptr) (full bool) {
	p := c.wbuf
	for c.wn < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[c.wn])), uintptr(len(p)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true
		default:
			c.werr = e
			return false
		}
	}
	return false
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
func (c *Conn) ExpectReply() {
	c.wmu.Lock()
	c.awaitReply = true
	c.wmu.Unlock()
}

// writeAwait is the read callback of an ExpectReply write: the first call
// writes and asks the poller to wait for readability; the next, made once
// the connection is readable, ends the wait. If the send buffer fills up
// it ends at once, and Write sends the rest the usual way.
func (c *Conn) writeAwait(fd uintptr) bool {
	if c.wrote {
		return true
	}
	c.wrote = true
	if c.send(fd) || c.werr != 0 {
		return true
	}
	return false
}

// ReadFrom and WriteTo of the embedded connection would bypass the raw
// calls; io.Copy gets plain Read and Write.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

func (c *Conn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
