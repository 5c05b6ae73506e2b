package hbone

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// Conn is one tunnelled connection on the client side: reads are the
// server's bytes, writes go to the server. It does not support deadlines.
type Conn struct {
	st      *stream
	local   net.Addr
	remote  net.Addr
	once    sync.Once
	release func()
}

func newConn(st *stream, t *Target, release func()) *Conn {
	return &Conn{
		st:      st,
		local:   net.TCPAddrFromAddrPort(netip.AddrPortFrom(t.SourceAddr, 0)),
		remote:  net.TCPAddrFromAddrPort(t.Addr),
		release: release,
	}
}

func (c *Conn) Read(p []byte) (int, error)  { return c.st.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite ends the request side of the stream (END_STREAM): the server
// reads EOF, as after a TCP half-close.
func (c *Conn) CloseWrite() error { return c.st.CloseWrite() }

// Close ends the stream both ways; a stream not finished is reset.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.st.reset(http2.ErrCodeCancel)
		c.release()
	})
	return nil
}

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

var errNoDeadline = errors.New("hbone stream: deadlines not supported")

func (c *Conn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *Conn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *Conn) SetWriteDeadline(time.Time) error { return errNoDeadline }

var _ net.Conn = (*Conn)(nil)

// isClosed reports errors that only say a connection was closed.
func isClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.ErrClosedPipe)
}

// copyBufSize is one DATA frame that fits a TLS record with its header: a
// read from the socket becomes one frame and one record, and a pooled
// buffer spares every tunnelled connection two 32 KiB allocations of
// io.Copy.
const copyBufSize = maxDataChunk

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Copy is io.Copy with a pooled buffer, for the relays of a tunnel: one
// side is always a stream, so the kernel's splice never applies, and
// io.Copy would allocate 32 KiB per call.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// A stream to a socket: the connection's reader writes to the socket
	// itself while this copy waits.
	if tc, ok := dst.(*net.TCPConn); ok {
		switch s := src.(type) {
		case *Conn:
			return s.st.copyTo(tc, *bp)
		case *stream:
			return s.copyTo(tc, *bp)
		}
	}
	// A socket to a stream: read in a poller loop that parks without a
	// read that finds nothing.
	if tc, ok := src.(*net.TCPConn); ok {
		var st *stream
		switch d := dst.(type) {
		case *Conn:
			st = d.st
		case *stream:
			st = d
		}
		if st != nil {
			if rc, err := rawtcp.New(tc); err == nil {
				return st.copyFrom(rc, *bp)
			}
		}
		src = rawtcp.Wrap(tc)
	}
	// Hide ReaderFrom/WriterTo: *net.TCPConn's fall back to io.Copy's own
	// allocation when the other side is not a socket.
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}
