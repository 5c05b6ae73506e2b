package hbone

import (
	"io"
	"net"
	"os"
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
}

// withRawIO returns c with raw reads and writes if it is a TCP connection,
// else c.
func withRawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{TCPConn: tc, rc: rc}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait in the poller
			}
			n, errno = int(r), e
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	n, err := rawWrite(c.rc, p, true)
	if err != nil {
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// rawWrite writes p to the socket with raw system calls; wait says whether
// to wait in the poller for room when the socket is full, or to return what
// it took.
func rawWrite(rc syscall.RawConn, p []byte, wait bool) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return !wait
			default:
				werr = os.NewSyscallError("write", e)
				return true
			}
		}
		return true
	})
	if werr == nil {
		werr = err
	}
	return n, werr
}

// WriteTo and ReadFrom of the embedded connection would bypass the raw
// calls; io.Copy gets plain Read and Write.
func (c *rawConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *rawConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
