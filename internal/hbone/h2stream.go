package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// errStreamDone is a write on a stream that already ended or was reset.
var errStreamDone = errors.New("hbone: stream closed")

// stream is one CONNECT stream: a byte pipe each way with HTTP/2 flow
// control. Its state is guarded by the connection's mu; cond wakes its
// reader and writer.
type stream struct {
	c    *h2conn
	id   uint32
	cond sync.Cond

	sendWindow int64  // the peer's window for this stream, unspent
	recvWindow int64  // ours, unused by the peer
	recvRead   int64  // bytes read not yet granted again
	recv       []byte // received, unread from off
	off        int
	recvEnd    bool  // the peer's END_STREAM came
	sentEnd    bool  // ours went
	err        error // reset either way, or the connection failed
	done       bool  // out of the connection's streams

	responded bool // client: the response's HEADERS came
	status    int

	rstSent atomic.Bool // no frame of this stream may follow our RST_STREAM

	// Direct delivery (copyTo): the reader writes DATA straight to the
	// sink socket when nothing is buffered and the consumer is not
	// writing, so a frame reaches the application without waking the
	// consumer goroutine.
	sink       *rawtcp.Conn
	sinkBusy   bool  // the consumer writes bytes it took from recv
	directBusy bool  // the reader writes to the sink
	direct     int64 // bytes the reader wrote to the sink
	sinkErr    error // the sink refused a direct write

	// Server side: canceled when the stream ends, for the Connect hook.
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *h2conn) newStreamLocked(id uint32) *stream {
	s := &stream{c: c, id: id, sendWindow: c.peerWindow, recvWindow: streamWindow}
	s.cond.L = &c.mu
	c.streams[id] = s
	return s
}

// endLocked ends the stream with err (nil: both sides ended cleanly) and
// takes it out of the connection. Unread bytes go back to the connection
// window.
func (s *stream) endLocked(err error) {
	if s.done {
		return
	}
	s.done = true
	if s.err == nil {
		s.err = err
	}
	delete(s.c.streams, s.id)
	s.c.closeDrainedLocked()
	if unread := int64(len(s.recv) - s.off); unread > 0 && err != nil {
		s.c.recvRead += unread
		s.recv, s.off = nil, 0
		s.c.grantLocked()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.cond.Broadcast()
}

// maybeDoneLocked retires the stream once both sides sent END_STREAM.
func (s *stream) maybeDoneLocked() {
	if s.recvEnd && s.sentEnd {
		s.endLocked(nil)
	}
}

// Read reads the peer's bytes; io.EOF after its END_STREAM.
func (s *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	c.mu.Lock()
	for s.off == len(s.recv) {
		if s.recvEnd {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if s.err != nil {
			err := s.err
			c.mu.Unlock()
			return 0, err
		}
		s.cond.Wait()
	}
	n := copy(p, s.recv[s.off:])
	s.off += n
	if s.off == len(s.recv) {
		s.recv, s.off = s.recv[:0], 0
	}
	sinc, cinc := s.consumedLocked(int64(n))
	c.mu.Unlock()
	s.grant(sinc, cinc)
	return n, nil
}

// consumedLocked counts n bytes as read and returns the window to give
// back, in large steps: one WINDOW_UPDATE per quarter window, not one per
// read.
func (s *stream) consumedLocked(n int64) (sinc, cinc uint32) {
	c := s.c
	s.recvRead += n
	c.recvRead += n
	if !s.recvEnd && !s.done && s.recvRead >= streamWindow/4 {
		sinc = uint32(s.recvRead)
		s.recvWindow += s.recvRead
		s.recvRead = 0
	}
	if c.recvRead >= connWindow/4 {
		cinc = uint32(c.recvRead)
		c.recvWindow += c.recvRead
		c.recvRead = 0
	}
	return sinc, cinc
}

func (s *stream) grant(sinc, cinc uint32) {
	if sinc == 0 && cinc == 0 {
		return
	}
	s.c.write(s.grantFrames(sinc, cinc))
}

func (s *stream) grantFrames(sinc, cinc uint32) func(fr *http2.Framer) error {
	return func(fr *http2.Framer) error {
		if cinc > 0 {
			if err := fr.WriteWindowUpdate(0, cinc); err != nil {
				return err
			}
		}
		if sinc > 0 && !s.rstSent.Load() {
			return fr.WriteWindowUpdate(s.id, sinc)
		}
		return nil
	}
}

// copyTo copies the stream to dst until the peer's END_STREAM, as Read
// and dst.Write would, but lets the connection's reader write DATA to dst
// itself while the copy is idle (see deliver). It returns the bytes that
// reached dst either way.
func (s *stream) copyTo(dst *net.TCPConn, buf []byte) (int64, error) {
	rc, err := rawtcp.New(dst)
	if err != nil {
		return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{s}, buf)
	}
	c := s.c
	c.mu.Lock()
	s.sink = rc
	var written int64
	for {
		s.sinkBusy = false
		for (s.off == len(s.recv) || s.directBusy) && !s.recvEnd && s.err == nil && s.sinkErr == nil {
			s.cond.Wait()
		}
		for s.directBusy { // the reader's last write, before its END_STREAM
			s.cond.Wait()
		}
		if s.sinkErr != nil || (s.off == len(s.recv) && (s.recvEnd || s.err != nil)) {
			break
		}
		n := copy(buf, s.recv[s.off:])
		s.off += n
		if s.off == len(s.recv) {
			s.recv, s.off = s.recv[:0], 0
		}
		s.sinkBusy = true
		sinc, cinc := s.consumedLocked(int64(n))
		c.mu.Unlock()
		s.grant(sinc, cinc)
		m, werr := rc.Write(buf[:n])
		written += int64(m)
		c.mu.Lock()
		if werr != nil {
			s.sinkErr = werr
		}
	}
	s.sink = nil
	written += s.direct
	err = s.sinkErr
	if err == nil && !s.recvEnd {
		err = s.err
	}
	c.mu.Unlock()
	return written, err
}

// errWindow leaves copyFrom's read loop to wait for the peer's window.
var errWindow = errors.New("hbone: stream window spent")

// copyFrom copies src to the stream until src's EOF, as io.Copy would,
// but reads src in rawtcp.ReadLoop: the read that empties the socket is
// the last before the goroutine parks. Waiting for the peer's window is
// done out of the loop: a Close of src waits for the loop's function, and
// the window may only come back once the closer resets the stream. (A
// flush that waits for room in the TLS socket does wait inside; it ends
// when the peer reads or the connection fails, whoever closes src.)
func (s *stream) copyFrom(src *rawtcp.Conn, buf []byte) (int64, error) {
	var written int64
	var rest []byte
	for {
		err := src.ReadLoop(func() error {
			for {
				n, err := src.Read(buf)
				if n > 0 {
					m, werr := s.write(buf[:n], false)
					written += int64(m)
					if werr != nil {
						return werr
					}
					if m < n {
						rest = buf[m:n]
						return errWindow
					}
				}
				if err != nil {
					return err
				}
			}
		})
		if errors.Is(err, errWindow) {
			m, werr := s.Write(rest)
			written += int64(m)
			if werr != nil {
				return written, werr
			}
			continue
		}
		if err == io.EOF {
			err = nil
		}
		return written, err
	}
}

// deliver writes data of a DATA frame straight to the stream's sink, with
// c.mu held on entry and exit (released during the write). It returns the
// bytes the sink took; the rest goes to recv for the consumer. Only a
// write that does not block is tried: the reader serves every stream of
// the connection.
func (s *stream) deliver(data []byte) int {
	if s.sink == nil || s.sinkBusy || s.directBusy || s.off != len(s.recv) || s.sinkErr != nil {
		return 0
	}
	c := s.c
	rc := s.sink
	s.directBusy = true
	c.mu.Unlock()
	n, err := rc.WriteSome(data)
	c.mu.Lock()
	s.directBusy = false
	s.direct += int64(n)
	if err != nil {
		s.sinkErr = err
	}
	if s.sinkErr != nil || s.err != nil || s.done {
		// copyTo waits for a failed sink, and, once the stream ended
		// meanwhile, for this write to be over.
		s.cond.Broadcast()
	}
	if sinc, cinc := s.consumedLocked(int64(n)); sinc > 0 || cinc > 0 {
		c.writeAsync(s.grantFrames(sinc, cinc))
	}
	return n
}

// Write sends p as DATA frames within the peer's windows.
func (s *stream) Write(p []byte) (int, error) { return s.write(p, true) }

// write is Write; with wait false it returns, short and without an error,
// when the windows are spent instead of waiting for the peer to grant more.
func (s *stream) write(p []byte, wait bool) (int, error) {
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for {
			if s.err != nil {
				err := s.err
				c.mu.Unlock()
				return written, err
			}
			if s.sentEnd || s.done {
				c.mu.Unlock()
				return written, errStreamDone
			}
			if s.sendWindow > 0 && c.sendWindow > 0 {
				break
			}
			if c.err != nil {
				err := c.err
				c.mu.Unlock()
				return written, err
			}
			if !wait {
				c.mu.Unlock()
				return written, nil
			}
			s.cond.Wait()
		}
		n := int64(len(p))
		n = min(n, s.sendWindow, c.sendWindow, int64(c.peerFrame), maxDataChunk)
		s.sendWindow -= n
		c.sendWindow -= n
		c.mu.Unlock()
		chunk := p[:n]
		err := c.write(func(fr *http2.Framer) error {
			if s.rstSent.Load() {
				return errStreamDone
			}
			return fr.WriteData(s.id, false, chunk)
		})
		if err != nil {
			return written, err
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// CloseWrite sends END_STREAM: the peer reads EOF.
func (s *stream) CloseWrite() error {
	c := s.c
	c.mu.Lock()
	if s.sentEnd || s.done {
		c.mu.Unlock()
		return nil
	}
	s.sentEnd = true
	c.mu.Unlock()
	err := c.write(func(fr *http2.Framer) error {
		if s.rstSent.Load() {
			return errStreamDone
		}
		return fr.WriteData(s.id, true, nil)
	})
	c.mu.Lock()
	s.maybeDoneLocked()
	c.mu.Unlock()
	return err
}

// respond sends the response HEADERS (server side); end also ends our side.
func (s *stream) respond(status int, end bool) error {
	c := s.c
	if end {
		c.mu.Lock()
		s.sentEnd = true
		c.mu.Unlock()
	}
	err := c.write(func(fr *http2.Framer) error {
		if s.rstSent.Load() {
			return errStreamDone
		}
		return c.writeHeaders(fr, s.id, end, []hpack.HeaderField{{Name: ":status", Value: statusText(status)}})
	})
	if end {
		c.mu.Lock()
		s.maybeDoneLocked()
		c.mu.Unlock()
	}
	return err
}

func statusText(code int) string {
	switch code {
	case http.StatusOK:
		return "200"
	}
	b := []byte{byte('0' + code/100%10), byte('0' + code/10%10), byte('0' + code%10)}
	return string(b)
}

// reset ends the stream with RST_STREAM code unless it already ended
// cleanly both ways.
func (s *stream) reset(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	if s.done && s.err == nil {
		c.mu.Unlock()
		return
	}
	wasDone := s.done
	s.endLocked(errStreamDone)
	c.mu.Unlock()
	if wasDone && !s.rstSent.Load() {
		// Reset by the peer or its connection failed: nothing to say.
		return
	}
	c.write(func(fr *http2.Framer) error {
		if s.rstSent.Swap(true) {
			return nil
		}
		return fr.WriteRSTStream(s.id, code)
	})
}

// waitResponse waits for the response HEADERS (client side) or ctx.
func (s *stream) waitResponse(ctx context.Context) (int, error) {
	c := s.c
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		s.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !s.responded {
		if s.err != nil {
			return 0, s.err
		}
		if s.recvEnd {
			return 0, errors.New("hbone: stream ended without a response")
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		s.cond.Wait()
	}
	return s.status, nil
}
