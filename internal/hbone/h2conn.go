package hbone

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is one HTTP/2 connection that carries CONNECT streams, on either
// side. x/net/http2's Framer encodes and decodes the frames and hpack; this
// is only the connection loop, shaped for a tunnel: one reader goroutine
// hands each DATA frame to its stream's buffer, and every writer writes and
// flushes its own frames under one lock, so a stream's bytes go to the
// socket from the goroutine that has them, with no hand-off to a writer
// goroutine. (Leaving the flush to a writer queued behind made a frame wait
// until that writer got a CPU: with 16 paced streams on one connection the
// round trip was slower, for no CPU saved.)
type h2conn struct {
	tc     net.Conn
	client bool
	log    *slog.Logger

	// Writing, under wmu.
	wmu  sync.Mutex
	bw   *bufio.Writer
	wfr  *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	werr error
	// flushPending: a writer yielded before flushing; it flushes what
	// others write meanwhile.
	flushPending bool

	// Reading: the reader goroutine only.
	rfr *http2.Framer
	in  frameBuf

	mu         sync.Mutex
	streams    map[uint32]*stream
	nextID     uint32 // client: the next stream to open
	lastPeerID uint32 // server: the highest stream the peer opened
	sendWindow int64  // connection window the peer granted, unspent
	recvWindow int64  // connection window we granted, unused by the peer
	recvRead   int64  // bytes read off streams (or dropped) not yet granted again
	peerWindow int64  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame  int    // the peer's SETTINGS_MAX_FRAME_SIZE
	peerMax    uint32 // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	goaway     bool   // the peer said it takes no new stream
	// Server side, once drain sent our first GOAWAY; once the peer
	// answered the PING behind it (drainAcked), new streams are refused
	// and the connection closes with its last stream.
	draining   bool
	drainAcked bool
	err        error // the connection failed: every stream ends with it
	closed     chan struct{}

	// onStream starts a new stream the peer opened (server side); it
	// must not block the reader.
	onStream func(s *stream, method, authority string, h http.Header)

	lastRead atomic.Int64 // unix nanos of the last frame read
	pingOut  atomic.Bool
	ka       *time.Timer
}

// Flow-control and framing sizes. ztunnel grants large windows so one
// stream runs at link speed; the per-stream window bounds the memory a
// stream whose reader stalls may hold.
const (
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	maxFrame     = 1 << 20 // largest frame we read

	// maxDataChunk keeps a DATA frame plus its 9-byte header within one
	// TLS record (16 KiB of plaintext).
	maxDataChunk = 16<<10 - 9

	maxServerStreams = 200 // ztunnel's
	maxHeaderList    = 16 << 10

	readIdle    = 10 * time.Second // Envoy's HBONE keepalive
	pingTimeout = 20 * time.Second
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

var (
	// errRefused is a stream the peer never took (GOAWAY before it, or the
	// connection was closed): it may be retried on another connection.
	errRefused = errors.New("hbone: stream not taken by the peer")
	errClosed  = errors.New("hbone: connection closed")
	errPing    = errors.New("hbone: peer did not answer a ping")
)

// drainPing is the payload of the PING that follows a draining server's
// GOAWAY; the keepalive's differs.
var drainPing = [8]byte{'d', 'r', 'a', 'i', 'n'}

// ResetError is a stream the peer reset (RST_STREAM).
type ResetError struct{ Code http2.ErrCode }

func (e *ResetError) Error() string { return "hbone: stream reset by peer: " + e.Code.String() }

func newH2Conn(tc net.Conn, client bool, log *slog.Logger) *h2conn {
	c := &h2conn{
		tc:         tc,
		client:     client,
		log:        log,
		streams:    map[uint32]*stream{},
		nextID:     1,
		sendWindow: 65535,
		recvWindow: connWindow,
		peerWindow: 65535,
		peerFrame:  16 << 10,
		peerMax:    1<<31 - 1,
		closed:     make(chan struct{}),
	}
	c.bw = bufio.NewWriterSize(tc, 16<<10)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.rfr = http2.NewFramer(nil, &c.in)
	c.rfr.SetReuseFrames()
	c.rfr.SetMaxReadFrameSize(maxFrame)
	c.rfr.MaxHeaderListSize = maxHeaderList
	c.rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// start sends the preface (client) and our settings, reads the peer's
// preface (server), then runs the reader and the keepalive.
func (c *h2conn) start() error {
	if !c.client {
		var p [len(clientPreface)]byte
		if _, err := io.ReadFull(c.tc, p[:]); err != nil {
			return fmt.Errorf("read preface: %w", err)
		}
		if string(p[:]) != clientPreface {
			return errors.New("bad HTTP/2 preface")
		}
	}
	err := c.write(func(fr *http2.Framer) error {
		if c.client {
			if _, err := c.bw.WriteString(clientPreface); err != nil {
				return err
			}
		}
		s := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrame},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
		}
		if c.client {
			s = append(s, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		} else {
			s = append(s, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxServerStreams})
		}
		if err := fr.WriteSettings(s...); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, connWindow-65535)
	})
	if err != nil {
		return err
	}
	c.ka = time.AfterFunc(readIdle, c.keepalive)
	go c.readLoop()
	return nil
}

// write runs f with the framer under the write lock, then flushes: after
// yielding once, so that writers already runnable (a burst of requests on
// several streams, each read by its own goroutine) add their frames first
// and one TLS record and one system call carry them all. A writer that
// finds a flush pending leaves its frames to it; the pending flush always
// follows, as the yielding writer resumes.
func (c *h2conn) write(f func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	if c.werr != nil {
		c.wmu.Unlock()
		return c.werr
	}
	err := f(c.wfr)
	// A stream that ended or a connection that takes no stream is no
	// failure of the socket: what was written before still goes out.
	if err != nil && !errors.Is(err, errStreamDone) && !errors.Is(err, errRefused) {
		c.werr = err
		c.wmu.Unlock()
		c.fail(err, 0)
		return err
	}
	if c.flushPending {
		c.wmu.Unlock()
		return err
	}
	c.flushPending = true
	c.wmu.Unlock()
	runtime.Gosched()
	c.wmu.Lock()
	c.flushPending = false
	ferr := c.werr
	if ferr == nil {
		if ferr = c.bw.Flush(); ferr != nil {
			c.werr = ferr
		}
	}
	c.wmu.Unlock()
	if ferr != nil {
		c.fail(ferr, 0)
		return ferr
	}
	return err
}

// writeAsync writes control frames the reader owes the peer (acks, resets)
// from another goroutine, so the reader never blocks on a full socket: a
// peer that stops reading while we stop reading would deadlock both.
func (c *h2conn) writeAsync(f func(fr *http2.Framer) error) {
	go c.write(f)
}

// writeHeaders encodes fields as one header block on stream id. The
// caller holds wmu.
func (c *h2conn) writeHeaders(fr *http2.Framer, id uint32, end bool, fields []hpack.HeaderField) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := c.peerFrame
	c.mu.Unlock()
	first := block
	if len(first) > max {
		first = first[:max]
	}
	block = block[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		n := min(len(block), max)
		if err := fr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			return err
		}
		block = block[n:]
	}
	return nil
}

// connError is a connection error we detect, with the code to send.
type connError struct {
	code http2.ErrCode
	msg  string
}

func (e *connError) Error() string { return "hbone: http2: " + e.msg }

func (c *h2conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			data := f.Data
			c.writeAsync(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
		} else if f.Data == drainPing {
			c.mu.Lock()
			c.drainAcked = true
			last := c.lastPeerID
			c.closeDrainedLocked()
			c.mu.Unlock()
			c.writeAsync(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
		}
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		s := c.streams[f.StreamID]
		if s != nil {
			s.endLocked(&ResetError{Code: f.ErrCode})
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return &connError{http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled"}
	}
	// PRIORITY, CONTINUATION (merged by the framer), unknown types: ignored.
	return nil
}

func (c *h2conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	data := f.Data()
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWindow {
		return &connError{http2.ErrCodeFlowControl, "DATA beyond the connection window"}
	}
	c.recvWindow -= n
	s := c.streams[f.StreamID]
	if s == nil || s.recvEnd || s.done {
		// A stream already ended or reset: its bytes are dropped, and
		// the connection window given back.
		c.recvRead += n
		c.grantLocked()
		if s == nil && c.idleStreamLocked(f.StreamID) {
			return &connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", f.StreamID)}
		}
		if s == nil || s.recvEnd {
			id := f.StreamID
			c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeStreamClosed) })
		}
		return nil
	}
	if n > s.recvWindow {
		s.endLocked(&ResetError{Code: http2.ErrCodeFlowControl})
		c.recvRead += n
		c.grantLocked()
		id := f.StreamID
		c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeFlowControl) })
		return nil
	}
	s.recvWindow -= n
	if pad := n - int64(len(data)); pad > 0 {
		s.recvRead += pad
		c.recvRead += pad
	}
	if n := s.deliver(data); n > 0 {
		data = data[n:]
		if s.done { // reset while the lock was released
			c.recvRead += int64(len(data))
			c.grantLocked()
			return nil
		}
	}
	if len(data) > 0 {
		if s.off > 0 && cap(s.recv)-len(s.recv) < len(data) {
			s.recv = s.recv[:copy(s.recv, s.recv[s.off:])]
			s.off = 0
		}
		s.recv = append(s.recv, data...)
	}
	if f.StreamEnded() {
		s.recvEnd = true
		s.maybeDoneLocked()
	}
	// A frame the sink took whole leaves nothing for the stream's
	// consumer: waking it (copyTo waits on cond) would only make it look
	// and wait again, a goroutine run per frame for nothing.
	if len(data) > 0 || f.StreamEnded() {
		s.cond.Broadcast()
	}
	return nil
}

// idleStreamLocked reports whether id names a stream never opened.
func (c *h2conn) idleStreamLocked(id uint32) bool {
	if id%2 == 1 { // client-initiated
		if c.client {
			return id >= c.nextID
		}
		return id > c.lastPeerID
	}
	return true // no server-initiated streams in HBONE
}

// grantLocked sends a connection WINDOW_UPDATE once a quarter of the
// window was used.
func (c *h2conn) grantLocked() {
	if c.recvRead >= connWindow/4 {
		n := c.recvRead
		c.recvRead = 0
		c.recvWindow += n
		c.writeAsync(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(n)) })
	}
}

func (c *h2conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if c.client {
		defer c.mu.Unlock()
		if s == nil {
			if c.idleStreamLocked(id) {
				return &connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on idle stream %d", id)}
			}
			return nil // a stream we reset
		}
		if !s.responded {
			status := f.PseudoValue("status")
			code := 0
			fmt.Sscanf(status, "%d", &code)
			if code < 200 && !f.StreamEnded() {
				return nil // 1xx: the final answer follows
			}
			if code < 100 || code > 999 {
				s.endLocked(&ResetError{Code: http2.ErrCodeProtocol})
				c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
				return nil
			}
			s.responded, s.status = true, code
		}
		if f.StreamEnded() {
			s.recvEnd = true
			s.maybeDoneLocked()
		}
		s.cond.Broadcast()
		return nil
	}
	if s != nil { // trailers
		if f.StreamEnded() {
			s.recvEnd = true
			s.maybeDoneLocked()
			s.cond.Broadcast()
		}
		c.mu.Unlock()
		return nil
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return &connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS opening stream %d out of order", id)}
	}
	c.lastPeerID = id
	if len(c.streams) >= maxServerStreams || c.goaway || c.drainAcked || c.err != nil {
		c.mu.Unlock()
		c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return nil
	}
	s = c.newStreamLocked(id)
	s.recvEnd = f.StreamEnded()
	c.mu.Unlock()
	h := http.Header{}
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		h[k] = append(h[k], hf.Value)
	}
	c.onStream(s, f.PseudoValue("method"), f.PseudoValue("authority"), h)
	return nil
}

func (c *h2conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var tableSize uint32
	var setTable bool
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerWindow
			c.peerWindow = int64(st.Val)
			for _, s := range c.streams {
				s.sendWindow += delta
				s.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			c.peerFrame = int(st.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMax = st.Val
		case http2.SettingHeaderTableSize:
			tableSize, setTable = st.Val, true
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.writeAsync(func(fr *http2.Framer) error {
		if setTable {
			c.henc.SetMaxDynamicTableSizeLimit(tableSize)
		}
		return fr.WriteSettingsAck()
	})
	return nil
}

func (c *h2conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return &connError{http2.ErrCodeFlowControl, "connection window over 2^31-1"}
		}
		for _, s := range c.streams {
			s.cond.Broadcast()
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
	}
	s.sendWindow += int64(f.Increment)
	if s.sendWindow > 1<<31-1 {
		s.endLocked(&ResetError{Code: http2.ErrCodeFlowControl})
		id := f.StreamID
		c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeFlowControl) })
	}
	s.cond.Broadcast()
	return nil
}

func (c *h2conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goaway = true
	if f.ErrCode != http2.ErrCodeNo {
		c.log.Debug("hbone peer sent GOAWAY", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	for id, s := range c.streams {
		if id > f.LastStreamID && (id%2 == 1) == c.client {
			s.endLocked(errRefused)
		}
	}
}

// drain asks the peer (server side) to open new streams elsewhere, as
// RFC 9113 section 6.8 has a server shut down gracefully: a GOAWAY with
// the largest stream id and a PING. The PING's answer proves the peer read
// the GOAWAY, so every stream it opened before is here: those are taken
// and served to their end, none refused. Then a second GOAWAY names the
// last stream taken, later ones are refused (REFUSED_STREAM: a client
// retries them elsewhere), and the connection closes when its last stream
// ends, so a close never resets a request in flight.
func (c *h2conn) drain() {
	c.mu.Lock()
	if c.draining || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.draining = true
	c.mu.Unlock()
	c.write(func(fr *http2.Framer) error {
		if err := fr.WriteGoAway(1<<31-1, http2.ErrCodeNo, nil); err != nil {
			return err
		}
		return fr.WritePing(false, drainPing)
	})
}

// closeDrainedLocked closes a drained connection whose last stream ended.
func (c *h2conn) closeDrainedLocked() {
	if c.draining && c.drainAcked && len(c.streams) == 0 && c.err == nil {
		go c.close()
	}
}

// resetStream ends stream id with err and tells the peer code.
func (c *h2conn) resetStream(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		s.endLocked(err)
	}
	c.mu.Unlock()
	c.writeAsync(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// fail ends the connection and every stream on it; code, if not zero, is
// sent to the peer in a GOAWAY first (best effort).
func (c *h2conn) fail(err error, code http2.ErrCode) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = errClosed
	}
	c.err = err
	for _, s := range c.streams {
		if s.responded || !c.client {
			s.endLocked(err)
		} else {
			s.endLocked(fmt.Errorf("%w: %w", errRefused, err))
		}
	}
	last := c.lastPeerID
	c.mu.Unlock()
	close(c.closed)
	if c.ka != nil {
		c.ka.Stop()
	}
	if code != 0 {
		c.log.Debug("hbone connection failed", "err", err)
		c.tc.SetWriteDeadline(time.Now().Add(time.Second))
		c.write(func(fr *http2.Framer) error { return fr.WriteGoAway(last, code, []byte(err.Error())) })
	}
	c.tc.Close()
}

// close closes the connection; its streams end.
func (c *h2conn) close() { c.fail(errClosed, 0) }

// keepalive pings a peer silent for readIdle and closes the connection if
// it stays silent pingTimeout longer, as Envoy's HBONE keepalive.
func (c *h2conn) keepalive() {
	select {
	case <-c.closed:
		return
	default:
	}
	idle := time.Since(time.Unix(0, c.lastRead.Load()))
	if idle < readIdle {
		c.ka.Reset(readIdle - idle)
		return
	}
	if c.pingOut.Load() {
		if idle >= readIdle+pingTimeout {
			c.fail(errPing, 0)
			return
		}
	} else {
		c.pingOut.Store(true)
		c.writeAsync(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'k', 'm', 'e', 's', 'h'}) })
	}
	c.ka.Reset(pingTimeout)
}

// canTake reports whether the connection may open another stream.
func (c *h2conn) canTake() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goaway && uint32(len(c.streams)) < c.peerMax && c.nextID < 1<<31-1
}

// openStream sends a CONNECT for authority with h on a new stream.
func (c *h2conn) openStream(authority string, h http.Header) (*stream, error) {
	var s *stream
	err := c.write(func(fr *http2.Framer) error {
		// The id is taken under the write lock: streams must open in
		// the order of their ids.
		c.mu.Lock()
		if c.err != nil || c.goaway {
			c.mu.Unlock()
			return errRefused
		}
		s = c.newStreamLocked(c.nextID)
		c.nextID += 2
		c.mu.Unlock()
		fields := []hpack.HeaderField{{Name: ":method", Value: http.MethodConnect}, {Name: ":authority", Value: authority}}
		for k, vs := range h {
			lk := strings.ToLower(k)
			if hopByHop(lk) {
				continue
			}
			for _, v := range vs {
				fields = append(fields, hpack.HeaderField{Name: lk, Value: v})
			}
		}
		return c.writeHeaders(fr, s.id, false, fields)
	})
	if err != nil {
		if s != nil {
			c.mu.Lock()
			s.endLocked(err)
			c.mu.Unlock()
		}
		if errors.Is(err, errRefused) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errRefused, err)
	}
	return s, nil
}

func hopByHop(k string) bool {
	switch k {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "host", "te":
		return true
	}
	return false
}

// active counts the connection's open streams.
func (c *h2conn) active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}
