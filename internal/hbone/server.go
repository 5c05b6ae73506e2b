package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// Request is one CONNECT as the server's hook sees it, after the TLS
// handshake verified the peer.
type Request struct {
	// Peer is the client's verified SPIFFE identity (the source
	// principal for authorization).
	Peer identity.Identity
	// PeerAddr is the TCP source of the HBONE connection.
	PeerAddr netip.AddrPort
	// LocalAddr is the TCP destination of the HBONE connection: the
	// address the client dialed (podIP:15008).
	LocalAddr netip.AddrPort
	// Authority is the CONNECT target as sent.
	Authority string
	// Header holds the request's headers (baggage, forwarded, ...).
	Header http.Header
	// Start is when the CONNECT arrived.
	Start time.Time
}

// Target parses the authority as ip:port. A hostname authority (a service
// name, for waypoints) is an error here; hooks that accept names parse
// Authority themselves.
func (r *Request) Target() (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(r.Authority)
	if err != nil {
		return netip.AddrPort{}, Reject(http.StatusBadRequest, fmt.Errorf("authority %q: want ip:port", r.Authority))
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// DirectTarget is Target plus ztunnel's destination check for a pod's own
// listener: the authority's address must be the address the client dialed,
// so a client cannot reach another workload through this one.
func (r *Request) DirectTarget() (netip.AddrPort, error) {
	ap, err := r.Target()
	if err != nil {
		return ap, err
	}
	if ap.Addr() != r.LocalAddr.Addr().Unmap() {
		return ap, Reject(http.StatusBadRequest, fmt.Errorf("authority %s is not the address dialed, %s", ap, r.LocalAddr.Addr()))
	}
	if ap.Port() == Port {
		return ap, Reject(http.StatusBadRequest, fmt.Errorf("authority %s: the tunnel port itself", ap))
	}
	return ap, nil
}

// Reject makes an error that answers the CONNECT with code (400 bad
// request, 401 denied by policy, 503 no upstream).
func Reject(code int, err error) error { return &StatusError{Code: code, Err: err} }

// ConnectFunc authorizes a request and dials its upstream. An error
// answers the request with its StatusError code, or 503.
type ConnectFunc func(ctx context.Context, r *Request) (net.Conn, error)

// Server terminates HBONE for one identity.
type Server struct {
	// Certs supplies the server certificate and the roots clients must
	// chain to; clients must be of its trust domain.
	Certs identity.Source
	// Identity returns whose certificate the server presents; called per
	// handshake, so a listener can change hands.
	Identity func() identity.Identity
	// Connect is the authorization and upstream dial hook.
	Connect ConnectFunc
	// Done, if set, is called when a stream whose Connect succeeded ends,
	// with bytes each way (client to upstream, upstream to client).
	Done func(r *Request, sent, received int64)
	Log  *slog.Logger

	once     sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[*h2conn]struct{} // the HTTP/2 connections served now
	draining bool
	active   atomic.Int64 // connections Serve accepted, until they end
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
	})
}

// Serve accepts HBONE connections on l until it fails or ctx ends; streams
// in flight keep going (Wait waits for them).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.init()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("hbone accept: %w", err)
		}
		s.wg.Add(1)
		s.active.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.active.Add(-1)
			s.ServeConn(ctx, c)
		}()
	}
}

// Wait waits until every connection Serve accepted has ended.
func (s *Server) Wait() { s.wg.Wait() }

// Active counts the connections Serve accepted that have not ended, from
// their accept (a handshake under way counts): a draining server is done
// when it is 0, since a stream taken but not yet handed to Connect is
// counted nowhere else.
func (s *Server) Active() int { return int(s.active.Load()) }

// Drain tells every client to open its new streams elsewhere (GOAWAY, as
// Envoy and ztunnel do when they drain; h2conn.drain) and serves the
// streams they have to their end; each connection closes after its last
// stream. Connections served later are drained from
// their start. Closing the listener is the caller's.
func (s *Server) Drain() {
	for _, c := range s.served(true) {
		c.drain()
	}
}

// Close closes every connection now; their streams end with it.
func (s *Server) Close() {
	for _, c := range s.served(false) {
		c.close()
	}
}

// served returns the connections served now, having set the server
// draining first if drain is set (under the same lock, so a connection
// tracked after is drained from its start).
func (s *Server) served(drain bool) []*h2conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if drain {
		s.draining = true
	}
	conns := make([]*h2conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// track adds hc to the connections served, or removes it (add false); it
// reports whether the server drains.
func (s *Server) track(hc *h2conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.conns, hc)
		return s.draining
	}
	if s.conns == nil {
		s.conns = map[*h2conn]struct{}{}
	}
	s.conns[hc] = struct{}{}
	return s.draining
}

// ServeConn runs the TLS handshake and HTTP/2 on one accepted connection.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	s.init()
	tc := tls.Server(rawtcp.Wrap(c), serverTLS(s.Certs, s.Identity))
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.Log.Debug("hbone handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != alpnH2 {
		s.Log.Debug("hbone client did not negotiate h2", "peer", c.RemoteAddr().String(), "alpn", cs.NegotiatedProtocol)
		tc.Close()
		return
	}
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, pc := range cs.PeerCertificates {
		raw[i] = pc.Raw
	}
	peer, err := peerIdentity(raw, s.Certs.Roots(), s.Certs.TrustDomain())
	if err != nil { // verified in the handshake; only a race with a root change gets here
		tc.Close()
		return
	}
	base := Request{Peer: peer, PeerAddr: addrPort(c.RemoteAddr()), LocalAddr: addrPort(c.LocalAddr())}
	hc := newH2Conn(tc, false, s.Log)
	var streams sync.WaitGroup
	hc.onStream = func(st *stream, method, authority string, h http.Header) {
		r := base
		r.Authority, r.Header, r.Start = authority, h, time.Now()
		streams.Add(1)
		go func() {
			defer streams.Done()
			s.serveStream(ctx, st, method, &r)
		}()
	}
	if err := hc.start(); err != nil {
		s.Log.Debug("hbone connection failed to start", "peer", c.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	if s.track(hc, true) {
		hc.drain()
	}
	defer s.track(hc, false)
	<-hc.closed
	streams.Wait()
}

// serveStream answers one CONNECT: the hook authorizes it and dials the
// upstream, and only then the client gets 200.
func (s *Server) serveStream(ctx context.Context, st *stream, method string, r *Request) {
	if method != http.MethodConnect {
		s.reject(st, r, Reject(http.StatusBadRequest, fmt.Errorf("method %s, want CONNECT", method)))
		return
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	st.c.mu.Lock()
	if st.done {
		st.c.mu.Unlock()
		return
	}
	st.cancel = cancel
	st.c.mu.Unlock()
	up, err := s.Connect(sctx, r)
	if err != nil {
		s.reject(st, r, err)
		return
	}
	var sent, received int64
	defer func() {
		up.Close()
		if s.Done != nil {
			s.Done(r, sent, received)
		}
	}()
	if err := st.respond(http.StatusOK, false); err != nil {
		st.reset(http2.ErrCodeCancel)
		return
	}
	sent, received = relay(up, st)
}

func (s *Server) reject(st *stream, r *Request, err error) {
	code := http.StatusServiceUnavailable
	var se *StatusError
	if errors.As(err, &se) {
		code = se.Code
	}
	s.Log.Debug("hbone connect refused", "peer", r.Peer.String(), "authority", r.Authority, "code", code, "err", err)
	st.respond(code, true)
	// The client's side may still be open: the stream is over.
	st.reset(http2.ErrCodeNo)
}

// relay copies between the upstream and the stream, one goroutine each
// way, passing half-closes on: the client's END_STREAM half-closes the
// upstream, the upstream's EOF sends END_STREAM. A failure either way
// resets the stream and closes the upstream, which ends the other way.
func relay(up net.Conn, st *stream) (sent, received int64) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		sent, err = Copy(up, st)
		if err != nil && !isClosed(err) {
			st.reset(http2.ErrCodeCancel)
			up.Close()
			return
		}
		if cw, ok := up.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
		up.Close()
	}()
	received, err := Copy(st, up)
	if err != nil && !isClosed(err) {
		st.reset(http2.ErrCodeCancel)
		up.Close()
	} else {
		st.CloseWrite()
	}
	<-done
	return sent, received
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
