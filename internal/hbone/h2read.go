package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// frameBuf holds the connection's decrypted bytes until they make whole
// frames: the framer only reads frames that are complete, so a read that
// would wait never stops it in the middle of one.
type frameBuf struct {
	buf  []byte
	r, w int
}

const frameBufSize = 32 << 10

func (b *frameBuf) Read(p []byte) (int, error) {
	if b.r == b.w {
		return 0, io.ErrUnexpectedEOF // only a header block too long to wait for
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	return n, nil
}

// complete reports whether the framer can read its next frame without
// running out: a frame with its payload, and a header block with all its
// CONTINUATION frames (the framer reads them in one go). A frame over
// maxFrame counts as complete (the framer refuses it from its header), as
// does a header block longer than maxFrame (so that it fails instead of
// growing the buffer without end).
func (b *frameBuf) complete() bool {
	p := b.buf[b.r:b.w]
	seen := 0
	for {
		if len(p) < 9 {
			return false
		}
		n := int(p[0])<<16 | int(p[1])<<8 | int(p[2])
		if n > maxFrame || seen > maxFrame {
			return true
		}
		if len(p) < 9+n {
			return false
		}
		typ, flags := http2.FrameType(p[3]), http2.Flags(p[4])
		if (typ != http2.FrameHeaders && typ != http2.FrameContinuation) || flags.Has(http2.FlagHeadersEndHeaders) {
			return true
		}
		p, seen = p[9+n:], seen+9+n
	}
}

// fill reads what the connection has into the buffer, growing it when a
// frame does not fit.
func (b *frameBuf) fill(r io.Reader) error {
	if b.buf == nil {
		b.buf = make([]byte, frameBufSize)
	}
	if b.w == len(b.buf) {
		if b.r > 0 {
			b.w = copy(b.buf, b.buf[b.r:b.w])
			b.r = 0
		} else {
			b.buf = append(b.buf, make([]byte, len(b.buf))...)
		}
	}
	n, err := r.Read(b.buf[b.w:])
	b.w += n
	return err
}

// readLoop reads frames until the connection fails. On a TLS connection
// over a raw socket it runs in rawtcp.ReadLoop: the frames of a wake-up
// are handled within one poller wait, and the read that empties the
// socket is the last before parking (no read that finds nothing).
func (c *h2conn) readLoop() {
	var err error
	if rc := rawConnOf(c.tc); rc != nil {
		err = rc.ReadLoop(c.readFrames)
	} else {
		err = c.readFrames() // reads that wait: it ends only on an error
	}
	c.readFailed(err)
}

func rawConnOf(c any) *rawtcp.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		rc, _ := tc.NetConn().(*rawtcp.Conn)
		return rc
	}
	return nil
}

// readFrames handles the frames buffered and reads more until a read
// would wait (rawtcp.ErrWouldBlock) or fails. It must not block: in
// rawtcp.ReadLoop a Close waits for it.
func (c *h2conn) readFrames() error {
	for {
		for c.in.complete() {
			f, err := c.rfr.ReadFrame()
			if err != nil {
				var se http2.StreamError
				if errors.As(err, &se) {
					c.resetStream(se.StreamID, se.Code, &ResetError{Code: se.Code})
					continue
				}
				return err
			}
			c.lastRead.Store(time.Now().UnixNano())
			c.pingOut.Store(false)
			if err := c.handle(f); err != nil {
				return &handleError{err}
			}
		}
		select {
		case <-c.closed: // closed by another goroutine: stop reading
			return errClosed
		default:
		}
		if err := c.in.fill(c.tc); err != nil {
			return err
		}
	}
}

// handleError is a frame that breaks the protocol.
type handleError struct{ err error }

func (e *handleError) Error() string { return e.err.Error() }
func (e *handleError) Unwrap() error { return e.err }

// readFailed ends the connection after its reader stopped with err.
func (c *h2conn) readFailed(err error) {
	var he *handleError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &he):
		c.fail(he.err, http2.ErrCodeProtocol)
	case errors.As(err, &ce):
		c.fail(fmt.Errorf("hbone: http2 protocol error from peer: %w: %v", err, c.rfr.ErrorDetail()), http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.fail(fmt.Errorf("hbone: peer sent a frame over %d bytes", maxFrame), http2.ErrCodeFrameSize)
	default:
		c.fail(err, 0)
	}
}
