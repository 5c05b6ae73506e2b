package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/rawtcp"

	"golang.org/x/net/http/httpguts"
)

// h1server.go serves plain HTTP/1.1 keep-alive requests on the
// connection's own goroutine. net/http's server, which the waypoint used
// for everything, starts a background read of the connection for every
// request (to notice a client that goes away) and stops it again before the
// next one: a goroutine hand-off, a read that returns EAGAIN and a wake-up
// per request, which under the benchmark's load was most of what the
// waypoint added over HAProxy. Here the request is parsed with net/http's
// own parser (http.ReadRequest) and the handler is the same ServeHTTP; only
// the connection loop and the response framing are ours. Anything unusual
// — HTTP/1.0, the HTTP/2 preface, Upgrade (h2c, WebSocket), Expect,
// CONNECT, obsolete line folding, a Host header missing or repeated, a
// transfer coding other than chunked, a header block over h1HeadMax — is
// handed, with the connection, to net/http's server at that request, so
// those keep net/http's exact behaviour.

const (
	// h1HeadMax is the largest request header block the fast path reads;
	// a larger one goes to net/http (which allows 1 MB and answers 431).
	h1HeadMax = 16 << 10
	// h1ServerIdle and h1ServerHeader are the server's keep-alive idle
	// timeout and request header timeout (as the net/http server's
	// IdleTimeout and ReadHeaderTimeout).
	h1ServerIdle   = time.Hour
	h1ServerHeader = 30 * time.Second
	// h1Watch is how long a request without a body runs before the
	// connection is watched for the client going away (which cancels the
	// request, as net/http's background read does). Shorter requests, nearly
	// all, pay nothing for it.
	h1Watch = 50 * time.Millisecond
	// h1Drain is how much of a request body the handler left unread is
	// read to keep the connection; beyond it the connection is closed.
	h1Drain = 256 << 10
	// h1Buffer is how much of a response is held before its header is
	// sent, so a short answer whose handler set no Content-Length gets one,
	// as net/http does.
	h1Buffer = 2048
)

// connReader is the connection's reader: it gives back first the byte the
// disconnect watcher read, if any.
type connReader struct {
	net.Conn
	pending    byte
	hasPending bool
}

func (r *connReader) Read(b []byte) (int, error) {
	if r.hasPending && len(b) > 0 {
		b[0] = r.pending
		r.hasPending = false
		return 1, nil
	}
	return r.Conn.Read(b)
}

// h1Server is the fast path's state of one connection.
type h1Server struct {
	p    *Proxy
	c    net.Conn
	cr   *connReader
	br   *bufio.Reader
	bw   *bufio.Writer
	info *connInfo
	ctx  context.Context
	// cancel cancels ctx, the context of the connection's requests: when
	// the client goes away during one (the connection then ends).
	cancel context.CancelFunc
	// r is the request the fast parser fills for each request.
	r h1Request
	// idleSince is when the idle read deadline was set; zero when another
	// deadline (or none) is set.
	idleSince time.Time
	// watchTimer starts the disconnect watcher of a request (h1Watch).
	watchTimer *time.Timer
	// remote is the client's address as net/http gives it in RemoteAddr.
	remote string

	// The disconnect watcher of the request in flight.
	watchDone chan struct{}
	stopping  atomic.Bool
	gone      atomic.Bool
	w         h1Writer
	// pin is the connection's upstream connection (h1Pin).
	pin h1Pin
	// body is the fast parser's request body, reused for each request
	// (nothing reads a request's body after its handler returns).
	body h1ReqBody
	// st is the handler's state of the request in flight (reqState).
	st reqState

	// The read loop's state (h1loop.go): the socket for peeking, whether
	// the buffered head is parsed into r (its body still coming), whether
	// a request is being served in the loop, whether the read deadline is
	// the header timeout's, and the peeking disconnect watcher.
	sc         syscall.RawConn
	headParsed bool
	inLoop     bool
	headerSet  bool
	watchMu    sync.Mutex
	watchArmed bool
	peekTimer  *time.Timer
}

var errHeadTooBig = errors.New("request header block too large")

// serveH1 serves c until it closes or needs net/http.
func (p *Proxy) serveH1(c net.Conn, cr *connReader, br *bufio.Reader, info *connInfo) {
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), connKey{}, info))
	defer cancel()
	s := &h1Server{p: p, c: c, cr: cr, br: br, info: info, remote: c.RemoteAddr().String(),
		ctx: ctx, cancel: cancel, watchDone: make(chan struct{}, 1)}
	s.pin.ctx = ctx
	info.pin = &s.pin
	defer s.unpin()
	s.r.base = *(&http.Request{}).WithContext(ctx)
	rc, _ := c.(*rawtcp.Conn)
	if rc != nil {
		s.sc, _ = rc.SyscallConn()
	}
	for {
		if s.sc != nil {
			// Whole requests are served in the read loop; it ends to
			// hand one that needs more here.
			switch err := rc.ReadLoop(s.serveBuffered); err {
			case errOutside:
			case errHeadTooBig:
				s.fallback()
				return
			default:
				c.Close()
				return
			}
		}
		head, err := s.peekHead()
		if err == errHeadTooBig {
			s.fallback()
			return
		}
		if err != nil {
			c.Close()
			return
		}
		var req *http.Request
		if s.r.parseRequestHead(head) {
			br.Discard(len(head))
			req = &s.r.req
			if req.ContentLength > 0 {
				s.body.reset(br, req.ContentLength)
				req.Body = &s.body
			}
		} else {
			switch classifyHead(head) {
			case headFallback:
				s.fallback()
				return
			case headBad:
				s.badRequest()
				return
			}
			req, err = http.ReadRequest(br)
			if err != nil || !validRequest(req) {
				s.badRequest()
				return
			}
			req = req.WithContext(ctx)
		}
		if s.idleSince.IsZero() {
			c.SetReadDeadline(time.Time{}) // the header timeout's
			s.headerSet = false
		}
		if s.bw == nil {
			s.bw = bufio.NewWriterSize(c, 4<<10)
		}
		if !s.serveOne(req) {
			c.Close()
			return
		}
	}
}

// h1ReqBody is a request body framed by Content-Length, read from the
// connection's reader.
type h1ReqBody struct {
	mu sync.Mutex
	br *bufio.Reader
	n  int64 // left to read
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF // the client ended short of its Content-Length
	}
	if err == nil && b.n == 0 {
		err = io.EOF
	}
	return n, err
}

func (b *h1ReqBody) Close() error { return nil }

func (b *h1ReqBody) reset(br *bufio.Reader, n int64) {
	b.mu.Lock()
	b.br, b.n = br, n
	b.mu.Unlock()
}

// fallback hands the connection, at the request not yet read, to
// net/http's server.
func (s *h1Server) fallback() {
	s.unpin()
	s.c.SetReadDeadline(time.Time{})
	if s.bw != nil && s.bw.Buffered() > 0 {
		s.bw.Flush()
	}
	if err := s.p.conns.push(&proxyConn{Conn: s.c, r: s.br, info: s.info}); err != nil {
		s.c.Close()
	}
}

// unpin ends the pairing of the connection's upstream connection, before
// the connection ends or net/http's server takes it over (whose handlers
// then read info.pin: it is written only while this goroutine serves).
func (s *h1Server) unpin() {
	if s.info.pin != nil {
		s.info.pin = nil
		s.p.h1c.unpin(&s.pin)
	}
}

// badRequest answers as net/http's server does to a request it cannot
// parse, and closes the connection.
func (s *h1Server) badRequest() {
	s.c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(s.c, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
	s.c.Close()
}

// peekHead waits for a whole request header block and returns it without
// consuming it. The read deadlines are set only when they change something:
// the idle one (h1ServerIdle) at most once a minute, so a connection idles
// between 59 and 60 minutes, and the header one (h1ServerHeader) only when
// the head did not come whole with its first bytes.
func (s *h1Server) peekHead() ([]byte, error) {
	if s.br.Buffered() == 0 {
		if now := time.Now(); now.Sub(s.idleSince) > time.Minute {
			s.c.SetReadDeadline(now.Add(h1ServerIdle))
			s.idleSince, s.headerSet = now, false
		}
		if _, err := s.br.Peek(1); err != nil {
			return nil, err
		}
	}
	n := s.br.Buffered()
	if b, _ := s.br.Peek(n); true {
		if i := headEnd(b); i >= 0 {
			return b[:i], nil
		}
	}
	s.c.SetReadDeadline(time.Now().Add(h1ServerHeader))
	s.idleSince, s.headerSet = time.Time{}, true
	for {
		b, _ := s.br.Peek(n)
		if i := headEnd(b); i >= 0 {
			return b[:i], nil
		}
		if n >= s.br.Size() {
			return nil, errHeadTooBig
		}
		if _, err := s.br.Peek(n + 1); err != nil {
			return nil, err
		}
		n = s.br.Buffered()
	}
}

// headEnd is the length of the header block at the start of b (through its
// empty line), or -1 if b does not hold all of it.
func headEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

type headKind int

const (
	headFast     headKind = iota // the fast path serves it
	headFallback                 // net/http serves it (and the rest of the connection)
	headBad                      // refused with 400
)

var (
	hdrContentLength = []byte("content-length")
	hdrTransferEnc   = []byte("transfer-encoding")
	hdrHost          = []byte("host")
	hdrUpgrade       = []byte("upgrade")
	hdrExpect        = []byte("expect")
	hdrH2Settings    = []byte("http2-settings")
	tokChunked       = []byte("chunked")
)

// classifyHead decides from the raw header block who serves the request.
// A request with both Content-Length and Transfer-Encoding is refused: the
// two framings disagreeing is how requests are smuggled past a proxy
// (RFC 9112 §6.1 allows a server to reject it; Envoy does).
func classifyHead(head []byte) headKind {
	line, rest, _ := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	_, proto, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 {
		return headBad
	}
	if !bytes.Equal(proto, []byte("HTTP/1.1")) || bytes.Equal(method, []byte("CONNECT")) {
		return headFallback
	}
	var cl, te, hosts int
	var teValue []byte
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return headFallback // obsolete line folding
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return headBad
		}
		switch {
		case bytes.EqualFold(name, hdrContentLength):
			cl++
		case bytes.EqualFold(name, hdrTransferEnc):
			te++
			teValue = bytes.TrimSpace(value)
		case bytes.EqualFold(name, hdrHost):
			hosts++
		case bytes.EqualFold(name, hdrUpgrade), bytes.EqualFold(name, hdrExpect), bytes.EqualFold(name, hdrH2Settings):
			return headFallback
		}
	}
	switch {
	case te > 0 && cl > 0:
		return headBad
	case te > 1:
		return headBad
	case te == 1 && !bytes.EqualFold(teValue, tokChunked):
		return headFallback // net/http answers 501 for codings it lacks
	case hosts != 1:
		return headFallback // net/http answers 400 with its reason
	}
	return headFast
}

// validRequest applies the checks net/http's server makes after parsing.
func validRequest(req *http.Request) bool {
	if !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	delete(req.Header, "Host")
	return true
}

// serveOne runs the handler for req and reports whether the connection
// stays open for the next request.
func (s *h1Server) serveOne(req *http.Request) (keep bool) {
	req.RemoteAddr = s.remote
	body := req.Body
	w := &s.w
	w.reset(s, req)

	watching := body == http.NoBody
	if watching && s.inLoop {
		s.startPeekWatch()
	} else if watching {
		s.stopping.Store(false)
		s.gone.Store(false)
		if s.watchTimer == nil {
			s.watchTimer = time.AfterFunc(h1Watch, s.watch)
		} else {
			s.watchTimer.Reset(h1Watch)
		}
	}
	aborted := s.run(w, req)
	if watching && s.inLoop {
		if s.stopPeekWatch() {
			return false
		}
	} else if watching && !s.watchTimer.Stop() {
		// The watcher runs: stop its read and wait for it.
		s.stopping.Store(true)
		s.c.SetReadDeadline(time.Unix(1, 0))
		<-s.watchDone
		s.c.SetReadDeadline(time.Time{})
		s.idleSince = time.Time{}
		if s.gone.Load() {
			return false
		}
	}
	if aborted {
		// As net/http: what was written goes out, then the connection
		// closes, so the client sees a cut answer, not a complete one.
		s.bw.Flush()
		return false
	}
	if err := w.finish(); err != nil {
		return false
	}
	if rb, ok := body.(*h1ReqBody); ok && rb.n == 0 {
		// read to its end by the handler: nothing to drain
	} else if body != http.NoBody {
		if n, err := io.CopyN(io.Discard, body, h1Drain+1); err != io.EOF || n > h1Drain {
			return false
		}
	}
	return !req.Close && !w.closeAfter
}

// run calls the handler; it reports true if the handler aborted the
// response by panicking.
func (s *h1Server) run(w *h1Writer, req *http.Request) (aborted bool) {
	defer func() {
		if err := recover(); err != nil {
			if err != http.ErrAbortHandler {
				s.p.log.Error("panic serving a request", "peer", s.remote, "error", err)
			}
			aborted = true
		}
	}()
	s.p.serveHTTP(w, req, &s.st)
	return false
}

// watch reads the connection while a request runs; the client closing it
// cancels the request. A byte it reads (the next pipelined request) is kept
// for the connection's reader.
func (s *h1Server) watch() {
	defer func() { s.watchDone <- struct{}{} }()
	var b [1]byte
	n, err := s.c.Read(b[:])
	if n == 1 {
		s.cr.pending, s.cr.hasPending = b[0], true
	}
	if err != nil && !s.stopping.Load() {
		s.gone.Store(true)
		s.cancel()
	}
}

// h1Writer is the fast path's http.ResponseWriter. It frames the answer as
// net/http's server does: the handler's Content-Length, else for a short
// answer complete when the handler returns a computed one, else chunked.
type h1Writer struct {
	s           *h1Server
	req         *http.Request
	h           http.Header
	status      int
	wroteHeader bool
	committed   bool
	chunked     bool
	head        bool
	clen        int64 // the declared Content-Length, -1 if none
	written     int64
	pending     []byte
	closeAfter  bool
	buf         [h1Buffer]byte
}

func (w *h1Writer) reset(s *h1Server, req *http.Request) {
	h := w.h
	if h == nil {
		h = make(http.Header, 8)
	} else {
		clear(h)
	}
	*w = h1Writer{s: s, req: req, h: h, clen: -1, head: req.Method == http.MethodHead}
	w.pending = w.buf[:0]
}

func (w *h1Writer) Header() http.Header { return w.h }

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational answer goes out at once; the final one follows.
		writeStatusLine(w.s.bw, code)
		w.h.Write(w.s.bw)
		w.s.bw.WriteString("\r\n")
		w.s.bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.h.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.clen = v
		} else {
			w.h.Del("Content-Length")
		}
	}
}

// bodyAllowed reports whether the status may carry a body (RFC 9110).
func (w *h1Writer) bodyAllowed() bool {
	return !(w.status >= 100 && w.status <= 199) && w.status != http.StatusNoContent && w.status != http.StatusNotModified
}

func (w *h1Writer) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.clen >= 0 && w.written+int64(len(b)) > w.clen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(b))
	if !w.committed {
		if len(w.pending)+len(b) <= cap(w.pending) {
			w.pending = append(w.pending, b...)
			return len(b), nil
		}
		if err := w.commit(false); err != nil {
			return 0, err
		}
	}
	return len(b), w.writeBody(b)
}

func (w *h1Writer) writeBody(b []byte) error {
	if w.head || len(b) == 0 {
		return nil
	}
	bw := w.s.bw
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(b)), 16))
		bw.WriteString("\r\n")
		bw.Write(b)
		_, err := bw.WriteString("\r\n")
		return err
	}
	_, err := bw.Write(b)
	return err
}

// FlushError sends what is written so far (http.ResponseController uses it).
func (w *h1Writer) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if err := w.commit(false); err != nil {
			return err
		}
	}
	return w.s.bw.Flush()
}

func (w *h1Writer) Flush() { w.FlushError() }

// commit writes the status line and header, then what the body held
// back; final says the handler is done.
func (w *h1Writer) commit(final bool) error {
	w.committed = true
	h := w.h
	if _, ok := h["Date"]; !ok {
		h["Date"] = httpDate()
	}
	if w.bodyAllowed() {
		if _, ok := h["Content-Type"]; !ok && len(w.pending) > 0 && h.Get("Transfer-Encoding") == "" {
			h["Content-Type"] = []string{http.DetectContentType(w.pending)}
		}
		switch {
		case w.clen >= 0:
		case final && (!w.head || len(w.pending) > 0):
			h["Content-Length"] = []string{strconv.Itoa(len(w.pending))}
		case w.head:
		default:
			w.chunked = true
			h["Transfer-Encoding"] = []string{"chunked"}
		}
	} else {
		h.Del("Transfer-Encoding")
	}
	if w.req.Close || w.closeAfter {
		h["Connection"] = []string{"close"}
	}
	bw := w.s.bw
	writeStatusLine(bw, w.status)
	writeHeader(bw, h)
	bw.WriteString("\r\n")
	p := w.pending
	w.pending = nil
	return w.writeBody(p)
}

// finish completes the answer after the handler returned.
func (w *h1Writer) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if err := w.commit(true); err != nil {
			return err
		}
	}
	bw := w.s.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	if w.clen >= 0 && w.written < w.clen && !w.head && w.bodyAllowed() {
		w.closeAfter = true // the body is short of what was declared
	}
	return bw.Flush()
}

// writeTrailers writes the trailers the handler declared in the Trailer
// header or set with http.TrailerPrefix.
func (w *h1Writer) writeTrailers() {
	t := http.Header{}
	for _, v := range w.h["Trailer"] {
		for _, k := range bytes.Split([]byte(v), []byte(",")) {
			key := http.CanonicalHeaderKey(string(bytes.TrimSpace(k)))
			if vv, ok := w.h[key]; ok {
				t[key] = vv
			}
		}
	}
	for k, vv := range w.h {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			t[k[len(http.TrailerPrefix):]] = vv
		}
	}
	if len(t) > 0 {
		t.Write(w.s.bw)
	}
}

func writeStatusLine(bw *bufio.Writer, code int) {
	if code == http.StatusOK {
		bw.WriteString("HTTP/1.1 200 OK\r\n")
		return
	}
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
}

// writeHeader writes h as net/http's Header.Write does (names it cannot
// send dropped, CR and LF in values as spaces, surrounding space trimmed),
// without sorting the names: the order of different names carries no
// meaning (RFC 9110 §5.3).
func writeHeader(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, strings.TrimSpace(v))
		}
	}
}

// httpDate is the Date header of now, formatted once a second; the slice
// is shared, so no one may change it.
func httpDate() []string {
	now := time.Now().Unix()
	if d := dateCache.Load(); d != nil && d.unix == now {
		return d.v
	}
	d := &cachedDate{unix: now, v: []string{time.Unix(now, 0).UTC().Format(http.TimeFormat)}}
	dateCache.Store(d)
	return d.v
}

type cachedDate struct {
	unix int64
	v    []string
}

var dateCache atomic.Pointer[cachedDate]
