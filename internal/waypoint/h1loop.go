package waypoint

import (
	"bufio"
	"errors"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// h1loop.go serves a plaintext HTTP/1.1 connection's requests inside
// rawtcp.ReadLoop, from the connection's own buffer: a request is served
// once its head and body are buffered whole, and the read that empties the
// socket is the last one before the goroutine parks (TCP_INQ says so). The
// request is served within the same wait of Go's poller, so what the
// client sends meanwhile (a pipelined request, a FIN after a half-close)
// leaves the connection readable when the answer is written and is read at
// once. Outside such a wait, parking needs a read that returns EAGAIN
// first: one system call per request, a fifth of the waypoint's reads.
//
// Nothing reads the connection inside the loop but the loop: the
// disconnect watcher of a long request peeks at the socket instead of
// reading it (peekWatch), and a body too large for the buffer is read
// outside the loop, as is everything the fast parser does not take.

var (
	// errOutside ends the loop to serve the buffered request outside it.
	errOutside = errors.New("request served outside the read loop")
	// errConnDone ends the loop after an answer that closes the connection.
	errConnDone = errors.New("connection done")
)

// serveBuffered is ReadLoop's function: it serves every whole request in
// the buffer, reading more while the socket has any.
func (s *h1Server) serveBuffered() error {
	for {
		n := s.br.Buffered()
		b, _ := s.br.Peek(n)
		end := headEnd(b)
		if end < 0 {
			if n >= s.br.Size() {
				return errHeadTooBig
			}
			if err := s.fill(n+1, n > 0); err != nil {
				return err
			}
			continue
		}
		if !s.headParsed {
			if !s.r.parseRequestHead(b[:end]) {
				return errOutside
			}
			s.headParsed = true
		}
		req := &s.r.req
		cl := req.ContentLength
		if cl > int64(s.br.Size()-end) {
			s.headParsed = false
			return errOutside
		}
		if n < end+int(cl) {
			// The parsed head stays for when the body is whole (its
			// strings are a copy).
			if err := s.fill(end+int(cl), false); err != nil {
				return err
			}
			continue
		}
		s.headParsed = false
		s.br.Discard(end)
		if cl > 0 {
			s.body.reset(s.br, cl)
			req.Body = &s.body
		}
		if s.bw == nil {
			s.bw = bufio.NewWriterSize(s.c, 4<<10)
		}
		s.inLoop = true
		keep := s.serveOne(req)
		s.inLoop = false
		if !keep {
			return errConnDone
		}
	}
}

// fill reads until n bytes are buffered; when the socket has no more it
// sets the deadline of the wait (the header timeout while a head is
// partly there, else the idle one) and returns rawtcp.ErrWouldBlock.
func (s *h1Server) fill(n int, partialHead bool) error {
	_, err := s.br.Peek(n)
	if errors.Is(err, rawtcp.ErrWouldBlock) {
		s.waitDeadline(partialHead)
	}
	return err
}

// waitDeadline sets the read deadline for a wait as peekHead does: the
// idle one at most once a minute, the header one once per partial head.
func (s *h1Server) waitDeadline(partialHead bool) {
	now := time.Now()
	if partialHead {
		if !s.headerSet {
			s.c.SetReadDeadline(now.Add(h1ServerHeader))
			s.headerSet, s.idleSince = true, time.Time{}
		}
		return
	}
	if s.headerSet || now.Sub(s.idleSince) > time.Minute {
		s.c.SetReadDeadline(now.Add(h1ServerIdle))
		s.headerSet, s.idleSince = false, now
	}
}

// startPeekWatch arms the disconnect watcher of a request served in the
// loop: after h1Watch, and every h1Watch after that, peekWatch looks at
// the socket without reading it.
func (s *h1Server) startPeekWatch() {
	s.watchMu.Lock()
	s.gone.Store(false)
	s.watchArmed = true
	if s.peekTimer == nil {
		s.peekTimer = time.AfterFunc(h1Watch, s.peekWatch)
	} else {
		s.peekTimer.Reset(h1Watch)
	}
	s.watchMu.Unlock()
}

// stopPeekWatch stops it; true if it found the client gone.
func (s *h1Server) stopPeekWatch() (gone bool) {
	s.watchMu.Lock()
	s.watchArmed = false
	s.peekTimer.Stop()
	s.watchMu.Unlock()
	return s.gone.Load()
}

// peekWatch cancels the request in flight if the client closed or reset
// the connection, as the reading watcher (watch) does; like it, it stops
// at the first byte of a next request. A call that fires after its request
// ended finds watchArmed false (under watchMu); one that fires during the
// next request watches that one.
func (s *h1Server) peekWatch() {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if !s.watchArmed {
		return
	}
	var n int
	var err error
	cerr := s.sc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	switch {
	case cerr != nil: // closed
		s.watchArmed = false
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR):
		s.peekTimer.Reset(h1Watch)
	case err == nil && n > 0: // the next request: stop watching
		s.watchArmed = false
	default: // end of stream, or reset
		s.watchArmed = false
		s.gone.Store(true)
		s.cancel()
	}
}
