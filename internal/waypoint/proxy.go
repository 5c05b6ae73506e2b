package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// Peer is who sent a connection.
type Peer struct {
	// Addr is the client's address.
	Addr netip.AddrPort
	// Principal is the client's verified identity without spiffe://
	// (cluster.local/ns/default/sa/client); "" for a plaintext client,
	// which the waypoint then knows by its address, as the rest of the
	// mesh does without mutual TLS.
	Principal string
	// MutualTLS is true when Principal comes from a peer certificate.
	MutualTLS bool
}

// DialFunc opens an upstream connection to an endpoint's ip:targetPort.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Options configure a Proxy.
type Options struct {
	// Gateway is the key (namespace/name) of the Gateway this waypoint is.
	Gateway string
	Logger  *slog.Logger
	// Metrics receives Istio's request metrics; nil counts nothing.
	Metrics *Metrics
	// AccessLog receives one JSON line per request; nil logs none.
	AccessLog io.Writer
	// Dial opens upstream connections; nil dials plain TCP.
	Dial DialFunc
	// HBONE, when set, carries connections to endpoints that take HBONE
	// (hbone_upstream.go); Dial (or plain TCP) the others.
	HBONE *UpstreamHBONE
	// DetectTimeout bounds how long a port without appProtocol waits for
	// the client's first bytes before it is taken as TCP (default 1s).
	DetectTimeout time.Duration
}

// Proxy is the L7 engine of one waypoint.
type Proxy struct {
	opts   Options
	log    *slog.Logger
	snap   atomic.Pointer[snapshot]
	server *http.Server
	conns  *chanListener
	h1, h2 *http.Transport
	// h1c carries the HTTP/1.1 requests it fits (h1client.go); h1 the rest.
	h1c    *h1Client
	dialUp DialFunc // endpoints' connections: HBONE or plain (TCP ports use it unwrapped)
	health health
	alog   *accessLog

	closeOnce sync.Once
	done      chan struct{}
}

// New returns a proxy serving mesh as the waypoint opts.Gateway. The mesh
// must name the Gateway.
func New(mesh *model.Mesh, opts Options) (*Proxy, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.DetectTimeout == 0 {
		opts.DetectTimeout = time.Second
	}
	p := &Proxy{opts: opts, log: opts.Logger.With("component", "waypoint"), done: make(chan struct{}),
		health: health{down: map[netip.AddrPort]time.Time{}}}
	if opts.AccessLog != nil {
		p.alog = &accessLog{w: opts.AccessLog}
	}
	if err := p.Update(mesh); err != nil {
		return nil, err
	}
	dial := opts.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	if opts.HBONE != nil {
		dial = p.upstreamDial(opts.HBONE, dial)
	}
	p.dialUp = dial
	wrapped := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, &connectError{addr: addr, err: err}
		}
		return c, nil
	}
	p.h1 = &http.Transport{DialContext: wrapped, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second,
		DisableCompression: true}
	p.h1.Protocols = new(http.Protocols)
	p.h1.Protocols.SetHTTP1(true)
	p.h1c = &h1Client{dial: wrapped}
	p.h2 = &http.Transport{DialContext: wrapped, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second,
		DisableCompression: true}
	p.h2.Protocols = new(http.Protocols)
	p.h2.Protocols.SetUnencryptedHTTP2(true)
	p.conns = newChanListener()
	p.server = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       time.Hour,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*proxyConn); ok {
				return context.WithValue(ctx, connKey{}, pc.info)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	p.server.Protocols = new(http.Protocols)
	p.server.Protocols.SetHTTP1(true)
	p.server.Protocols.SetUnencryptedHTTP2(true)
	go p.server.Serve(p.conns)
	return p, nil
}

// Update compiles mesh and swaps it in; on error the previous
// configuration stays.
func (p *Proxy) Update(mesh *model.Mesh) error {
	s, err := compile(mesh, p.opts.Gateway)
	if err != nil {
		return err
	}
	old := p.snap.Swap(s)
	if old != nil && p.h1c != nil {
		if changed := changedUpstreams(old, s); len(changed) > 0 {
			p.dropUpstreams(changed)
		}
	}
	p.log.Info("config applied", "services", len(s.byDst), "workloads", len(s.workloads), "routes", len(mesh.Routes),
		"policies", len(mesh.WaypointPolicies))
	return nil
}

// Close stops serving; connections handed over are closed.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		close(p.done)
		p.server.Close()
		p.h1.CloseIdleConnections()
		p.h1c.closeIdle(true)
		p.h2.CloseIdleConnections()
	})
	return nil
}

// connInfo is what the HTTP handler knows of a request's connection.
type connInfo struct {
	dst  netip.AddrPort
	sp   *servicePort // nil on a plaintext listener port shared by several services
	peer Peer
	// port is the port the connection arrived on, to pick a service by
	// Host when sp is nil.
	port uint16
	// series are the metric series of the connection's last request: the
	// next one mostly has the same labels (metrics.go).
	series atomic.Pointer[series]
	// byHost is the service port its last request's Host named, when sp is
	// nil: the next request mostly names the same one.
	byHost atomic.Pointer[hostPort]
	// pin is the upstream connection slot of an HTTP/1.1 connection the
	// fast path serves (h1Pin), nil otherwise; only its goroutine uses it.
	pin *h1Pin
}

// hostPort is the service port a Host header named under one config.
type hostPort struct {
	s    *snapshot
	host string
	sp   *servicePort
}

type connKey struct{}

// ServeConn proxies one connection whose original destination is dst (a
// service VIP:port, or podIP:port of a workload this waypoint serves) from
// peer. It returns at once; the connection is closed
// when done.
func (p *Proxy) ServeConn(c net.Conn, dst netip.AddrPort, peer Peer) {
	s := p.snap.Load()
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	sp := s.byDst[dst]
	if sp == nil {
		sp = s.workloadPort(dst)
	}
	if sp == nil {
		p.log.Debug("connection to a destination this waypoint does not serve", "dst", dst, "peer", peer.Addr)
		c.Close()
		return
	}
	go p.serve(c, &connInfo{dst: dst, sp: sp, peer: peer, port: dst.Port()}, sp.proto)
}

func (p *Proxy) serve(c net.Conn, info *connInfo, proto protocol) {
	c = rawtcp.Wrap(c)
	cr := &connReader{Conn: c}
	br := bufio.NewReaderSize(cr, h1HeadMax)
	if proto == protoDetect {
		proto = detect(c, br, p.opts.DetectTimeout)
	}
	if proto == protoTCP {
		p.forwardTCP(c, br, info)
		return
	}
	// HTTP/1.1 on this goroutine (h1server.go); it hands the connection to
	// net/http's server for HTTP/2 and whatever else it does not serve.
	p.serveH1(c, cr, br, info)
}

// detect sniffs the first bytes: an HTTP/1 request line or the HTTP/2
// preface is HTTP; anything else, or silence, is TCP.
func detect(c net.Conn, br *bufio.Reader, timeout time.Duration) protocol {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	b, _ := br.Peek(8)
	if len(b) == 0 {
		return protoTCP
	}
	for _, m := range [][]byte{[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("HEAD "), []byte("DELETE "),
		[]byte("PATCH "), []byte("OPTIONS "), []byte("PRI * HT"), []byte("CONNECT "), []byte("TRACE ")} {
		n := min(len(m), len(b))
		if bytes.Equal(b[:n], m[:n]) && len(b) >= len(m) {
			return protoHTTP
		}
	}
	return protoTCP
}

// ServeListener accepts plaintext connections on l, taking each
// connection's local port as the service port: the service is the one of
// this waypoint with that port, or (HTTP) the one the Host header names.
// It returns when l fails or the proxy is closed.
func (p *Proxy) ServeListener(l net.Listener) error {
	go func() { <-p.done; l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-p.done:
				return nil
			default:
			}
			return err
		}
		local, _ := netip.ParseAddrPort(c.LocalAddr().String())
		remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		if !p.servePort(c, local.Port(), Peer{Addr: remote}) {
			c.Close()
		}
	}
}

// servePort serves c, which arrived on port, as a connection to the
// service of this waypoint with that port (or, for HTTP, the one the Host
// header names). It reports false when no service fits.
func (p *Proxy) servePort(c net.Conn, port uint16, peer Peer) bool {
	s := p.snap.Load()
	sps := s.byPort[port]
	if len(sps) == 0 {
		return false
	}
	info := &connInfo{peer: peer, port: port}
	proto := sps[0].proto
	if len(sps) == 1 {
		info.sp = sps[0]
		info.dst = netip.AddrPortFrom(sps[0].svc.m.Addresses[0], port)
	} else if proto == protoTCP {
		return false // TCP gives no Host to choose by
	}
	go p.serve(c, info, proto)
	return true
}

// forwardTCP is L4: one upstream connection per downstream connection, to
// an endpoint of the service, after L4 policy.
func (p *Proxy) forwardTCP(c net.Conn, br *bufio.Reader, info *connInfo) {
	defer c.Close()
	s := p.snap.Load()
	if info.sp == nil {
		return
	}
	svc := info.sp.svc
	a := p.attrs(s, info, nil)
	a.tcp = true
	if d := authorize(append(s.gatewayPolicies[:len(s.gatewayPolicies):len(s.gatewayPolicies)], svc.policies...), &a); !d.allow {
		p.log.Debug("tcp connection denied", "service", svc.key, "peer", info.peer.Addr, "policy", d.policy)
		return
	}
	be := info.sp.self
	for attempt := 0; attempt < 3; attempt++ {
		ep, addr := p.pickEndpoint(be, nil)
		if ep == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		up, err := p.dial(ctx, addr)
		cancel()
		if err != nil {
			p.health.fail(addr)
			continue
		}
		defer up.Close()
		done := make(chan struct{}, 2)
		go func() { io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
		go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
		<-done
		<-done
		return
	}
}

func (p *Proxy) dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	return p.dialUp(ctx, "tcp", addr.String())
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}

// proxyConn is a connection handed to the HTTP server, with the bytes
// detection peeked and what the handler must know.
type proxyConn struct {
	net.Conn
	r    *bufio.Reader
	info *connInfo
}

func (c *proxyConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// chanListener is a net.Listener fed by ServeConn.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

var errClosed = errors.New("waypoint closed")

func (l *chanListener) push(c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.closed:
		return errClosed
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, errClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
