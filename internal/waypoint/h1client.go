package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// h1Client sends HTTP/1.1 requests upstream on pooled connections from the
// handler's own goroutine: it writes the request, flushes once and reads
// the response on the same goroutine. http.Transport instead hands every
// request to a write goroutine and a read goroutine per connection; under
// load those hand-offs (channel operations and scheduler wake-ups) were the
// largest cost of the waypoint after the syscalls themselves. It serves
// requests whose body is empty or small enough to hold (maxReplay), so a
// connection the backend closed while idle is retried on a new one with
// the same bytes; everything else (streaming bodies, HTTP/2) goes through
// http.Transport.
type h1Client struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu     sync.Mutex
	idle   map[netip.AddrPort][]*h1Conn // by endpoint, most recently used last
	closed bool
	// gen counts the times idle connections were dropped (an endpoint's
	// identity or tunnel changed, or the client closed): a connection
	// pinned to a downstream one before that is not used again.
	gen atomic.Uint64
}

// h1MaxIdle is how many idle connections are kept per endpoint, and
// h1IdleTimeout how long one is kept.
const (
	h1MaxIdle     = 256
	h1IdleTimeout = 90 * time.Second
)

type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	host   netip.AddrPort
	idleAt time.Time
	// hdr is the header map of the answer in flight, reused for each: an
	// answer's Header is valid until its body is closed (the connection
	// may then carry another request).
	hdr http.Header
	// resp is the block of the answer in flight (fastResponse), and spare
	// one fastResponse may reuse: only while c is pinned, since the
	// handler that got the answer may still read its header values after
	// the body is closed (its writer holds them until it writes its own
	// head), and only that handler's goroutine uses a pinned connection,
	// for its next request. A connection put in the pool keeps neither:
	// another goroutine may take it at once.
	resp, spare *h1RespBlock

	// pin is the downstream connection's slot the exchange in flight
	// may leave c in (nil: back to the pool).
	pin *h1Pin
	// While c is paired with a downstream connection: its context (the
	// one its requests carry), the stop of the AfterFunc that expires c
	// when that context ends (registered once per pairing, not per
	// exchange), alive (the exchange's stop while paired: false once the
	// context ended) and the client's gen at pairing.
	pinCtx  context.Context
	pinStop func() bool
	alive   func() bool
	pinGen  uint64
}

// h1Pin is a downstream HTTP/1.1 connection's upstream connection: its
// next request to the same endpoint goes out on it, with no pool lock and
// no per-request context registration. The endpoint is still picked per
// request; a request to another endpoint takes a pooled connection, which
// stays pinned after it if the slot is empty. Used only by the downstream
// connection's goroutine, which serves one request at a time.
type h1Pin struct {
	ctx context.Context
	c   *h1Conn
}

// take returns the pinned connection to host, if any, taking it out of
// the slot.
func (h *h1Client) take(pin *h1Pin, host netip.AddrPort, now time.Time) *h1Conn {
	c := pin.c
	if c == nil || c.host != host {
		return nil
	}
	pin.c = nil
	if now.Sub(c.idleAt) >= h1IdleTimeout || c.pinGen != h.gen.Load() {
		c.close()
		return nil
	}
	return c
}

// unpin ends the pairing of pin's connection: back to the pool, unless its
// downstream connection's context already ended.
func (h *h1Client) unpin(pin *h1Pin) {
	c := pin.c
	if c == nil {
		return
	}
	pin.c = nil
	if !c.unpair() || c.pinGen != h.gen.Load() {
		c.c.Close()
		return
	}
	h.put(c)
}

// unpair unregisters c from its downstream connection's context; false if
// the context had ended (c's deadline is then in the past).
func (c *h1Conn) unpair() bool {
	if c.pinStop == nil {
		return true
	}
	ok := c.pinStop()
	c.pinCtx, c.pinStop, c.alive = nil, nil, nil
	return ok
}

// close closes c and ends its pairing.
func (c *h1Conn) close() {
	c.unpair()
	c.c.Close()
}

// fits reports whether r can go through the h1Client.
func (h *h1Client) fits(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.ContentLength >= 0 && r.ContentLength <= maxReplay &&
		r.Header.Get("Upgrade") == ""
}

func (h *h1Client) get(host netip.AddrPort, now time.Time) *h1Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	conns := h.idle[host]
	for len(conns) > 0 {
		c := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		if now.Sub(c.idleAt) < h1IdleTimeout {
			h.idle[host] = conns
			return c
		}
		c.c.Close()
	}
	delete(h.idle, host)
	return nil
}

func (h *h1Client) put(c *h1Conn) {
	c.idleAt = time.Now()
	c.resp, c.spare = nil, nil
	h.mu.Lock()
	if !h.closed && len(h.idle[c.host]) < h1MaxIdle {
		if h.idle == nil {
			h.idle = map[netip.AddrPort][]*h1Conn{}
		}
		h.idle[c.host] = append(h.idle[c.host], c)
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	c.c.Close()
}

// dropIdleSince closes host's idle connections idle since t or longer.
func (h *h1Client) dropIdleSince(host netip.AddrPort, t time.Time) {
	h.mu.Lock()
	var drop []*h1Conn
	keep := h.idle[host][:0]
	for _, c := range h.idle[host] {
		if !c.idleAt.After(t) {
			drop = append(drop, c)
		} else {
			keep = append(keep, c)
		}
	}
	if len(keep) == 0 {
		delete(h.idle, host)
	} else {
		h.idle[host] = keep
	}
	h.mu.Unlock()
	for _, c := range drop {
		c.c.Close()
	}
}

// dropIdleTo closes the idle connections to the endpoints drop picks.
func (h *h1Client) dropIdleTo(drop func(host netip.AddrPort) bool) {
	h.gen.Add(1)
	h.mu.Lock()
	var closing []*h1Conn
	for host, conns := range h.idle {
		if drop(host) {
			closing = append(closing, conns...)
			delete(h.idle, host)
		}
	}
	h.mu.Unlock()
	for _, c := range closing {
		c.c.Close()
	}
}

// closeIdle closes the idle connections; with final, none is kept after.
func (h *h1Client) closeIdle(final bool) {
	h.gen.Add(1)
	h.mu.Lock()
	idle := h.idle
	h.idle = nil
	h.closed = h.closed || final
	h.mu.Unlock()
	for _, conns := range idle {
		for _, c := range conns {
			c.c.Close()
		}
	}
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// RoundTrip sends req (URL.Host is the endpoint) and returns its response;
// the response body hands the connection back when read to its end and
// closed, and the response's Header is valid until then. req.Context
// bounds the whole exchange, body included.
func (h *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	host, err := netip.ParseAddrPort(req.URL.Host)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", req.URL.Host, err)
	}
	body, err := readBody(req.Body, req.ContentLength)
	if err != nil {
		return nil, err
	}
	if body != nil {
		defer bodyPool.Put(body)
	}
	return h.do(req.Context(), req, host, body, nil)
}

// readBody reads a request body of n bytes into a buffer from bodyPool;
// nil when there is none.
func readBody(rc io.ReadCloser, n int64) (*bytes.Buffer, error) {
	if rc == nil || rc == http.NoBody || n <= 0 {
		return nil, nil
	}
	body := bodyPool.Get().(*bytes.Buffer)
	body.Reset()
	body.Grow(int(n))
	b := body.AvailableBuffer()[:n]
	_, err := io.ReadFull(rc, b)
	body.Write(b)
	rc.Close()
	if err != nil {
		bodyPool.Put(body)
		return nil, err
	}
	return body, nil
}

// do sends req to host with body (nil: none) in place of req.Body. The
// head is written from req as the waypoint forwards it: the hop-by-hop
// headers are left out (writeRequestHead), so the handler need not copy
// the downstream request to change them. ctx bounds the exchange. pin
// (nil: none) is the downstream connection's slot: its connection to host
// is used first, and the connection used is left in it when it is free.
func (h *h1Client) do(ctx context.Context, req *http.Request, host netip.AddrPort, body *bytes.Buffer, pin *h1Pin) (*http.Response, error) {
	for try := 0; ; try++ {
		var c *h1Conn
		if try == 0 {
			now := time.Now()
			if pin != nil {
				c = h.take(pin, host, now)
			}
			if c == nil {
				c = h.get(host, now)
			}
		}
		reused := c != nil
		if c == nil {
			nc, err := h.dial(ctx, "tcp", host.String())
			if err != nil {
				return nil, err
			}
			nc = rawtcp.Wrap(nc)
			c = &h1Conn{c: nc, br: bufio.NewReaderSize(nc, 8<<10), bw: bufio.NewWriterSize(nc, 8<<10), host: host}
		}
		c.pin = pin
		resp, stale, err := h.exchange(ctx, c, req, body)
		if err == nil {
			return resp, nil
		}
		c.close()
		if !(reused && stale && try == 0) || ctx.Err() != nil {
			return nil, err
		}
		// The backend closed the idle connection before it saw the
		// request: send it again on a new one (never another pooled one,
		// which may be as stale), and drop the connections idle longer.
		h.dropIdleSince(host, c.idleAt)
	}
}

// exchange writes req on c and reads the response head. stale says the
// connection failed before any byte of a response came back.
func (h *h1Client) exchange(ctx context.Context, c *h1Conn, req *http.Request, body *bytes.Buffer) (*http.Response, bool, error) {
	// Only the context ends the exchange (a deadline of the connection
	// itself could fire before ctx.Err says why). A connection paired with
	// the downstream one whose context this is has that registered once.
	stop := c.alive
	if c.pinStop == nil || ctx != c.pinCtx {
		stop = context.AfterFunc(ctx, c.expire)
	}
	var n int64
	if body != nil {
		n = int64(body.Len())
	}
	writeRequestHead(c.bw, req, n)
	if body != nil {
		c.bw.Write(body.Bytes())
	}
	if rc, ok := c.c.(*rawtcp.Conn); ok && c.br.Buffered() == 0 && c.bw.Buffered() > 0 {
		// The flush (one Write of the request's last bytes) returns when
		// the answer is there to read.
		rc.ExpectReply()
	}
	if err := c.bw.Flush(); err != nil {
		stop()
		return nil, isStale(err), err
	}
	// A connection the backend closed while idle ends before the first
	// byte of an answer (ReadResponse would call that ErrUnexpectedEOF).
	if _, err := c.br.Peek(1); err != nil {
		stop()
		return nil, isStale(err), err
	}
	for {
		if resp := h.fastResponse(c, req, stop); resp != nil {
			return resp, false, nil
		}
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			stop()
			return nil, false, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // 100 Continue, 103 Early Hints: the answer follows
		}
		if resp.Body == http.NoBody || resp.Body == nil {
			h.release(c, stop, resp.Close)
			return resp, false, nil
		}
		resp.Body = &h1Body{rc: resp.Body, c: c, h: h, stop: stop, close: resp.Close}
		return resp, false, nil
	}
}

// h1RespFields is how many header lines of an answer fastResponse
// allocates room for with the response itself.
const h1RespFields = 12

// fastResponse parses the answer head buffered in c.br with
// parseResponseHead; nil when it is not whole in the buffer or not one the
// parser takes (http.ReadResponse then reads it).
func (h *h1Client) fastResponse(c *h1Conn, req *http.Request, stop func() bool) *http.Response {
	buf, _ := c.br.Peek(c.br.Buffered())
	end := headEnd(buf)
	if end < 0 {
		return nil
	}
	// The response, its body and the backing of its header values in one
	// allocation, or the connection's spare (h1Conn.spare); the header map
	// is the connection's (h1Conn.hdr).
	rb := c.spare
	if rb == nil {
		rb = new(h1RespBlock)
	} else {
		c.spare = nil
		*rb = h1RespBlock{}
	}
	c.resp = rb
	if len(c.hdr) > 8 {
		c.hdr = nil // clearing a larger map walks its whole table
	}
	if c.hdr == nil {
		c.hdr = make(http.Header, 8)
	}
	r, ok := parseResponseHead(buf[:end], req.Method, c.hdr, rb.vals[:])
	if !ok {
		return nil
	}
	c.br.Discard(end)
	rb.resp = http.Response{Status: r.statusText, StatusCode: r.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: r.header, ContentLength: r.clen, Close: r.close, Request: req}
	resp := &rb.resp
	if r.clen == 0 {
		// c is free before the handler reads the header: the map goes
		// with the answer, not with c into the pool.
		c.hdr = nil
		resp.Body = http.NoBody
		h.release(c, stop, r.close)
		return resp
	}
	rb.body = h1Body{c: c, h: h, stop: stop, close: r.close, left: r.clen}
	resp.Body = &rb.body
	return resp
}

// h1RespBlock is what fastResponse allocates for an answer.
type h1RespBlock struct {
	resp http.Response
	body h1Body
	vals [h1RespFields]string
}

// expire ends what c is doing: its context ended.
func (c *h1Conn) expire() { c.c.SetDeadline(time.Unix(1, 0)) }

// release hands c back to its downstream connection's slot if that is
// free, else to the pool, unless the exchange's context fired (its
// deadline is then set in the past) or the backend asked to close.
func (h *h1Client) release(c *h1Conn, stop func() bool, closeConn bool) {
	pin := c.pin
	c.pin = nil
	if !stop() || closeConn {
		c.close()
		return
	}
	c.idleAt = time.Now()
	if pin != nil && pin.c == nil && pin.ctx.Err() == nil {
		if c.pinStop != nil && c.pinCtx != pin.ctx && !c.unpair() {
			c.c.Close()
			return
		}
		if c.pinStop == nil {
			c.pinCtx, c.pinGen = pin.ctx, h.gen.Load()
			c.pinStop = context.AfterFunc(pin.ctx, c.expire)
			c.alive = func() bool { return c.pinCtx != nil && c.pinCtx.Err() == nil }
		}
		pin.c = c
		c.spare, c.resp = c.resp, nil
		return
	}
	if !c.unpair() {
		c.c.Close()
		return
	}
	h.put(c)
}

// isStale reports whether err means the peer had closed the connection
// before the request reached it.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// h1Body is a response body that returns its connection to the pool once
// read to the end and closed: net/http's body (rc), or with rc nil the
// next left bytes of the connection (a Content-Length the fast parser
// read).
type h1Body struct {
	rc    io.ReadCloser
	left  int64
	c     *h1Conn
	h     *h1Client
	stop  func() bool
	close bool
	eof   bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.rc == nil {
		return b.readLeft(p)
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) readLeft(p []byte) (int, error) {
	if b.left <= 0 {
		b.eof = true
		return 0, io.EOF
	}
	if b.done {
		return 0, errors.New("read of a closed response body")
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.c.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF // the backend ended short of its Content-Length
	}
	if err == nil && b.left == 0 {
		b.eof = true
		err = io.EOF
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	if !b.eof {
		// Unread bytes stay on the connection: it cannot carry another
		// request. Close it first, so the body's Close does not read on.
		b.stop()
		b.c.close()
		if b.rc != nil {
			b.rc.Close()
		}
		return nil
	}
	if b.rc != nil {
		b.rc.Close()
	}
	b.h.release(b.c, b.stop, b.close)
	return nil
}
