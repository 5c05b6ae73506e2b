package hbone

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn is a TCP connection whose reads and writes are raw system calls
// on its non-blocking socket, waiting in Go's poller as net.TCPConn does.
//
// Why: every system call made through the runtime's entersyscall wakes Go's
// sysmon thread if it sleeps (it sleeps while the process is idle, which a
// tunnel at 1000 requests/s mostly is); awake, sysmon polls every 20 µs
// until the process is idle again, and with one P it takes the P from a
// write that lasts two polls (a write on loopback or a veth runs the
// receiver's network stack inline) and hands it to another thread. Each of
// those is a context switch, and on a paravirtualised VM a context switch
// costs more than the request's own work: perf of the tunnel showed sysmon
// and finish_task_switch as the largest items. A raw call on a
// non-blocking socket never blocks, so the runtime loses nothing by not
// knowing about it.
type rawConn struct {
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
}

func newRawConn(tc *net.TCPConn) (*rawConn, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &rawConn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn = c.readRaw, c.writeRaw
	return c, nil
}

// withRawIO returns c with raw reads and writes if it is a TCP connection,
// else c.
func withRawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := newRawConn(tc)
	if err != nil {
		return c
	}
	return rc
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
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
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readRaw is the poller's callback: false means not ready, wait.
func (c *rawConn) readRaw(fd uintptr) bool {
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

func (c *rawConn) Write(p []byte) (int, error) {
	n, err := c.write(p, true)
	if err != nil {
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// write writes p with raw system calls; wait says whether to wait in the
// poller for room when the socket is full, or to return what it took.
func (c *rawConn) write(p []byte, wait bool) (int, error) {
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr, c.wwait = p, 0, 0, wait
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.wmu.Unlock()
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	return n, err
}

// writeRaw writes until all is sent; false means the socket is full,
// wait.
func (c *rawConn) writeRaw(fd uintptr) bool {
	p := c.wbuf
	for c.wn < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[c.wn])), uintptr(len(p)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !c.wwait
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// WriteTo and ReadFrom of the embedded connection would bypass the raw
// calls; io.Copy gets plain Read and Write.
func (c *rawConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *rawConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
