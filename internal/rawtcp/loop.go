package rawtcp

import (
	"errors"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// ErrWouldBlock is what Read returns inside ReadLoop when the socket has
// nothing more to read: the loop's function returns it (possibly wrapped,
// as crypto/tls passes a temporary error on) to wait for readability.
var ErrWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "rawtcp: read would block" }
func (wouldBlock) Timeout() bool   { return false }
func (wouldBlock) Temporary() bool { return true } // crypto/tls keeps a partial record

// How a ReadLoop read found the receive queue empty.
const (
	notDrained = iota
	drainedByEAGAIN
	drainedByInq // TCP_INQ said so; a reset may be pending
)

// tcpInq is TCP_INQ (and its control message, TCP_CM_INQ): each recvmsg
// says how many bytes are left in the receive queue, and 1 when none is
// but a FIN came (Linux 4.18).
const tcpInq = 0x24

// ReadLoop runs fn whenever the connection is readable, all within one
// wait of Go's poller, until fn returns an error other than ErrWouldBlock
// or the connection is closed. Inside fn, Read reads with raw recvmsg
// calls and returns ErrWouldBlock once the receive queue is known empty.
// Only fn may read the connection meanwhile, and Close waits for fn to
// return: fn may block (the waypoint serves a request in it, writing to
// this connection and waiting on others) only where nothing closes the
// connection from another goroutine. A read deadline set with
// SetReadDeadline or SetDeadline, before or inside fn, ends the loop with
// os.ErrDeadlineExceeded when it passes.
//
// Why: a plain Read that parks must first read until EAGAIN, because a
// read that came back short says only that no more data was queued, not
// that no FIN or reset is pending; and each Read starts by clearing the
// poller's readiness, so skipping that read after a short one could lose
// an event for good. Within one poller wait no readiness is cleared, and
// TCP_INQ says with the read itself whether more (data or a FIN) is
// queued: a read that empties the queue is the last, and the goroutine
// parks at once. One system call per wake-up less, which on a
// paravirtualised guest is several microseconds each.
//
// A reset that came together with the last data is not in TCP_INQ's
// count, and brings no later event: parking after such a read arms a read
// deadline resetCheck ahead (unless one is armed), and when it passes the
// loop reads once more the usual way (a read that finds nothing, or the
// reset). So a reset is seen within resetCheck, at the cost of at most one
// wake-up per resetCheck on a busy connection.
func (c *Conn) ReadLoop(fn func() error) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if !c.inqSet {
		c.inqSet = true
		c.inq = c.rc.Control(func(fd uintptr) {
			if syscall.SetsockoptInt(int(fd), syscall.SOL_TCP, tcpInq, 1) != nil {
				c.inq = false
			}
		}) == nil
	}
	defer c.disarm()
	for {
		var ferr error
		err := c.rc.Read(func(fd uintptr) bool {
			c.loopFd, c.looping, c.drained = fd, true, notDrained
			ferr = fn()
			c.looping = false
			if !errors.Is(ferr, ErrWouldBlock) {
				return true
			}
			if c.drained == drainedByInq {
				c.arm()
			} else {
				c.disarm() // an EAGAIN read: nothing is pending
			}
			return false
		})
		if errors.Is(err, os.ErrDeadlineExceeded) && c.armed {
			c.disarm() // the caller's deadline again, if it set one
			if d := c.readDeadline(); d.IsZero() || time.Now().Before(d) {
				continue // the next callback reads first
			}
		}
		if err != nil {
			return err
		}
		return ferr
	}
}

// resetCheck bounds how late a reset that came with the last data is seen.
const resetCheck = time.Second

// arm sets the reset check's deadline, unless the caller's own read
// deadline comes first (the loop then ends at it anyway).
func (c *Conn) arm() {
	if c.armed {
		return
	}
	t := time.Now().Add(resetCheck)
	if d := c.readDeadline(); !d.IsZero() && d.Before(t) {
		return
	}
	c.armed = c.TCPConn.SetReadDeadline(t) == nil
}

// disarm puts the caller's read deadline (or none) back.
func (c *Conn) disarm() {
	if c.armed {
		c.armed = false
		c.TCPConn.SetReadDeadline(c.readDeadline())
	}
}

// SetReadDeadline is net.Conn's; the deadline is kept so that ReadLoop's
// reset check, which borrows the read deadline, can put it back.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.keepDeadline(t)
	return c.TCPConn.SetReadDeadline(t)
}

// SetDeadline is net.Conn's, keeping the read deadline as SetReadDeadline.
func (c *Conn) SetDeadline(t time.Time) error {
	c.keepDeadline(t)
	return c.TCPConn.SetDeadline(t)
}

func (c *Conn) keepDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	c.rdeadline.Store(ns)
}

func (c *Conn) readDeadline() time.Time {
	if ns := c.rdeadline.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// loopRead is Read inside ReadLoop.
func (c *Conn) loopRead(p []byte) (int, error) {
	if c.drained != notDrained {
		return 0, ErrWouldBlock
	}
	if !c.inq {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, c.loopFd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		return c.loopResult(int(r), e, 1)
	}
	for {
		c.iov.Base = &p[0]
		c.iov.SetLen(len(p))
		c.msg = syscall.Msghdr{Iov: &c.iov, Iovlen: 1, Control: (*byte)(unsafe.Pointer(&c.cmsg[0]))}
		c.msg.SetControllen(len(c.cmsg) * 8)
		r, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, c.loopFd, uintptr(unsafe.Pointer(&c.msg)), 0)
		if e == syscall.EINTR {
			continue
		}
		c.iov.Base = nil // p is the caller's
		left := int32(1) // no report: assume more
		if e == 0 && c.msg.Controllen >= syscall.SizeofCmsghdr+4 {
			h := (*syscall.Cmsghdr)(unsafe.Pointer(&c.cmsg[0]))
			if h.Level == syscall.SOL_TCP && h.Type == tcpInq {
				left = *(*int32)(unsafe.Pointer(&c.cmsg[2])) // right after the 16-byte header
			}
		}
		return c.loopResult(int(r), e, left)
	}
}

func (c *Conn) loopResult(n int, e syscall.Errno, left int32) (int, error) {
	switch {
	case e == syscall.EAGAIN:
		c.drained = drainedByEAGAIN
		return 0, ErrWouldBlock
	case e != 0:
		return 0, c.opError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	if left == 0 {
		c.drained = drainedByInq
	}
	return n, nil
}
