package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/identity"
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

	once sync.Once
	h2   *http2.Server
	wg   sync.WaitGroup
}

func (s *Server) init() {
	s.once.Do(func() {
		s.h2 = &http2.Server{
			MaxConcurrentStreams:         200, // ztunnel's
			MaxReadFrameSize:             maxFrame,
			MaxUploadBufferPerConnection: connWindow,
			MaxUploadBufferPerStream:     streamWindow,
			ReadIdleTimeout:              10 * time.Second,
			PingTimeout:                  20 * time.Second,
		}
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
	})
}

type peerKey struct{}

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
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, c)
		}()
	}
}

// Wait waits until every connection Serve accepted has ended.
func (s *Server) Wait() { s.wg.Wait() }

// ServeConn runs the TLS handshake and HTTP/2 on one accepted connection.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	s.init()
	tc := tls.Server(c, serverTLS(s.Certs, s.Identity))
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
	base := &Request{Peer: peer, PeerAddr: addrPort(c.RemoteAddr()), LocalAddr: addrPort(c.LocalAddr())}
	s.h2.ServeConn(tc, &http2.ServeConnOpts{
		Context: context.WithValue(context.WithoutCancel(ctx), peerKey{}, base),
		Handler: http.HandlerFunc(s.serveHTTP),
	})
}

func (s *Server) serveHTTP(w http.ResponseWriter, hr *http.Request) {
	base := hr.Context().Value(peerKey{}).(*Request)
	r := *base
	r.Authority = hr.Host
	r.Header = hr.Header
	r.Start = time.Now()
	if hr.Method != http.MethodConnect {
		s.reject(w, &r, Reject(http.StatusBadRequest, fmt.Errorf("method %s, want CONNECT", hr.Method)))
		return
	}
	up, err := s.Connect(hr.Context(), &r)
	if err != nil {
		s.reject(w, &r, err)
		return
	}
	var sent, received int64
	defer func() {
		up.Close()
		if s.Done != nil {
			s.Done(&r, sent, received)
		}
	}()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	sent, received = relay(up, hr.Body, w, rc)
}

func (s *Server) reject(w http.ResponseWriter, r *Request, err error) {
	code := http.StatusServiceUnavailable
	var se *StatusError
	if errors.As(err, &se) {
		code = se.Code
	}
	s.Log.Debug("hbone connect refused", "peer", r.Peer.String(), "authority", r.Authority, "code", code, "err", err)
	w.WriteHeader(code)
}

// relay copies between the upstream and the stream until the upstream has
// nothing more to say. The client's END_STREAM half-closes the upstream;
// the upstream's EOF ends the response (and so the stream).
func relay(up net.Conn, body io.Reader, w io.Writer, rc *http.ResponseController) (sent, received int64) {
	var toUp atomic.Int64
	go func() {
		Copy(countingWriter{up, &toUp}, body)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			received += int64(n)
			if rc.Flush() != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	// The upstream is done: the handler's return ends the stream, and the
	// request body with it, which ends the other copy.
	up.Close()
	return toUp.Load(), received
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// countingWriter counts what reaches w as it goes, so a reader of n sees
// the bytes relayed so far.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
