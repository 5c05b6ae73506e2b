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
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/rawtcp"
)

// Pool defaults, as ztunnel's (POOL_MAX_STREAMS_PER_CONNECTION, pool idle
// timeout) and its HTTP/2 windows.
const (
	DefaultMaxStreams  = 100
	DefaultIdleTimeout = 5 * time.Minute
)

// Target is one tunnelled connection to open.
type Target struct {
	// Source is the identity whose certificate the client presents: the
	// workload that opened the connection.
	Source identity.Identity
	// SourceAddr is the workload's address the tunnel leaves from; part
	// of the pool key, as in ztunnel, and handed to DialTCP.
	SourceAddr netip.Addr
	// Destination lists the identities the server may prove: the
	// destination workload's, plus its services' SANs.
	Destination []identity.Identity
	// Addr is where the tunnel goes: the destination pod's address and
	// port 15008 (or a waypoint's).
	Addr netip.AddrPort
	// Authority is the CONNECT target: podIP:targetPort, or VIP:port for
	// a waypoint.
	Authority string
	// Header is sent with the CONNECT request (baggage, forwarded).
	Header http.Header
}

// DialFunc makes the TCP connection under a tunnel.
type DialFunc func(ctx context.Context, t *Target) (net.Conn, error)

// Dialer opens HBONE streams. Its zero value is not usable: set Certs.
type Dialer struct {
	// Certs supplies the source workloads' certificates and the roots.
	Certs identity.Source
	// DialTCP makes the TCP connection to t.Addr; nil dials from this
	// network namespace. The tunnel opens it in the source pod's netns.
	DialTCP DialFunc
	// MaxStreams per HTTP/2 connection; a new connection opens past it.
	MaxStreams int
	// IdleTimeout closes a pooled connection without streams.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the TCP connect and TLS handshake.
	HandshakeTimeout time.Duration
	Log              *slog.Logger

	once     sync.Once
	mu       sync.Mutex
	pools    map[poolKey]*pool
	draining bool // Drain: pooled connections take no new stream
}

// poolKey is ztunnel's WorkloadKey: connections are never shared across
// identities or addresses.
type poolKey struct {
	src     identity.Identity
	dst     string // the expected identities, sorted, joined
	addr    netip.AddrPort
	srcAddr netip.Addr
}

type pool struct {
	dialing sync.Mutex // one new connection at a time per key
	conns   []*pooledConn
}

type pooledConn struct {
	cc      *h2conn
	streams int // open and reserved streams; guarded by Dialer.mu
	// idle closes the connection once it carried no stream for the idle
	// timeout; guarded by Dialer.mu.
	idle *time.Timer
	// expires is when the first of the two certificates of its handshake
	// (ours, the peer's) expires: from then on it takes no new stream, so
	// a rotated certificate is what new connections are carried with.
	// Streams open on it go on to their end.
	expires time.Time
}

// usable reports whether pc may take a new stream at now.
func (pc *pooledConn) usable(now time.Time) bool {
	return pc.cc.canTake() && (pc.expires.IsZero() || now.Before(pc.expires))
}

func (d *Dialer) init() {
	d.once.Do(func() {
		d.pools = map[poolKey]*pool{}
		if d.Log == nil {
			d.Log = slog.New(slog.DiscardHandler)
		}
	})
}

func (d *Dialer) maxStreams() int {
	if d.MaxStreams > 0 {
		return d.MaxStreams
	}
	return DefaultMaxStreams
}

func (d *Dialer) idleTimeout() time.Duration {
	if d.IdleTimeout > 0 {
		return d.IdleTimeout
	}
	return DefaultIdleTimeout
}

func keyOf(t *Target) poolKey {
	ids := make([]string, len(t.Destination))
	for i, id := range t.Destination {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return poolKey{src: t.Source, dst: strings.Join(ids, ","), addr: t.Addr, srcAddr: t.SourceAddr}
}

// Dial opens a stream to t and returns it once the server answered 200.
// The stream is a net.Conn whose CloseWrite ends the request side.
func (d *Dialer) Dial(ctx context.Context, t *Target) (*Conn, error) {
	d.init()
	if len(t.Destination) == 0 {
		return nil, fmt.Errorf("hbone dial %s: no expected destination identity", t.Addr)
	}
	key := keyOf(t)
	pc, reused, err := d.acquire(ctx, key, t)
	if err != nil {
		return nil, err
	}
	c, err := d.connect(ctx, pc, t)
	if err != nil && (reused || errors.Is(err, errRefused)) && !isStatus(err) {
		// The pooled connection went bad under us (GOAWAY, reset), or a
		// new one refused the stream (its server drains: it handed over
		// to another process): the request never reached an upstream,
		// so a fresh connection may retry.
		d.Log.Debug("hbone stream failed on a pooled connection; retrying on a new one", "addr", t.Addr, "err", err)
		pc, _, err = d.acquireNew(ctx, key, t)
		if err != nil {
			return nil, err
		}
		c, err = d.connect(ctx, pc, t)
	}
	return c, err
}

// acquire reserves a stream on a pooled connection with room, or on a new
// one; reused says which.
func (d *Dialer) acquire(ctx context.Context, key poolKey, t *Target) (*pooledConn, bool, error) {
	if pc := d.reserve(key); pc != nil {
		return pc, true, nil
	}
	return d.acquireNew(ctx, key, t)
}

func (d *Dialer) reserve(key poolKey) *pooledConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[key]
	if p == nil || d.draining {
		return nil
	}
	live := p.conns[:0]
	var found *pooledConn
	now := time.Now()
	for _, pc := range p.conns {
		if !pc.usable(now) {
			if pc.streams == 0 {
				pc.cc.close()
				continue // closed, idle-timed-out, GOAWAY or expired: drop it
			}
		} else if found == nil && pc.streams < d.maxStreams() {
			found = pc
		}
		live = append(live, pc)
	}
	clear(p.conns[len(live):])
	p.conns = live
	if found != nil {
		found.streams++
		if found.idle != nil {
			found.idle.Stop()
		}
	}
	return found
}

func (d *Dialer) acquireNew(ctx context.Context, key poolKey, t *Target) (*pooledConn, bool, error) {
	d.mu.Lock()
	p := d.pools[key]
	if p == nil {
		p = &pool{}
		d.pools[key] = p
	}
	d.mu.Unlock()
	p.dialing.Lock()
	defer p.dialing.Unlock()
	// Another caller may have opened one meanwhile.
	if pc := d.reserve(key); pc != nil {
		return pc, true, nil
	}
	cc, expires, err := d.open(ctx, t)
	if err != nil {
		return nil, false, err
	}
	pc := &pooledConn{cc: cc, streams: 1, expires: expires}
	pc.idle = time.AfterFunc(d.idleTimeout(), func() { d.closeIdle(pc) })
	pc.idle.Stop()
	d.mu.Lock()
	p.conns = append(p.conns, pc)
	d.mu.Unlock()
	return pc, false, nil
}

func (d *Dialer) release(pc *pooledConn) {
	d.mu.Lock()
	pc.streams--
	if pc.streams == 0 {
		if d.draining {
			pc.cc.close()
		} else {
			pc.idle.Reset(d.idleTimeout())
		}
	}
	d.mu.Unlock()
}

// Drain stops the pool from taking new streams: idle connections close
// now, the others after their last stream. A Dial meanwhile opens a
// connection of its own, closed after its stream.
func (d *Dialer) Drain() {
	d.init()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining = true
	for _, p := range d.pools {
		for _, pc := range p.conns {
			if pc.streams == 0 {
				pc.cc.close()
			}
		}
	}
}

// closeIdle closes pc if it still carries no stream; the next reserve
// drops it from its pool.
func (d *Dialer) closeIdle(pc *pooledConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if pc.streams == 0 {
		pc.cc.close()
	}
}

// open makes a new TLS + HTTP/2 connection for t; expires is when the
// first certificate of its handshake expires.
func (d *Dialer) open(ctx context.Context, t *Target) (cc *h2conn, expires time.Time, err error) {
	timeout := d.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var raw net.Conn
	if d.DialTCP != nil {
		raw, err = d.DialTCP(hctx, t)
	} else {
		var nd net.Dialer
		raw, err = nd.DialContext(hctx, "tcp", t.Addr.String())
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("hbone dial %s: %w", t.Addr, err)
	}
	// The certificate is fetched under the caller's context, not the
	// handshake's: a slow CA shows as the handshake timing out.
	cfg := clientTLS(hctx, d.Certs, t.Source, t.Destination)
	var ours *tls.Certificate
	getCert := cfg.GetClientCertificate
	cfg.GetClientCertificate = func(i *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := getCert(i)
		ours = c
		return c, err
	}
	tc := tls.Client(rawtcp.Wrap(raw), cfg)
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, time.Time{}, fmt.Errorf("hbone dial %s: tls: %w", t.Addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpnH2 {
		tc.Close()
		return nil, time.Time{}, fmt.Errorf("hbone dial %s: server chose ALPN %q, want h2", t.Addr, p)
	}
	if ours != nil && ours.Leaf != nil {
		expires = ours.Leaf.NotAfter
	}
	if peer := tc.ConnectionState().PeerCertificates; len(peer) > 0 && (expires.IsZero() || peer[0].NotAfter.Before(expires)) {
		expires = peer[0].NotAfter
	}
	cc = newH2Conn(tc, true, d.Log)
	if err := cc.start(); err != nil {
		tc.Close()
		return nil, time.Time{}, fmt.Errorf("hbone dial %s: http2: %w", t.Addr, err)
	}
	d.Log.Debug("hbone connection opened", "addr", t.Addr, "src", t.Source, "dst", t.Destination)
	return cc, expires, nil
}

// connect sends the CONNECT on pc, whose stream is reserved.
func (d *Dialer) connect(ctx context.Context, pc *pooledConn, t *Target) (*Conn, error) {
	st, err := pc.cc.openStream(t.Authority, t.Header)
	if err != nil {
		d.release(pc)
		return nil, fmt.Errorf("hbone connect %s via %s: %w", t.Authority, t.Addr, err)
	}
	code, err := st.waitResponse(ctx)
	if err == nil && code != http.StatusOK {
		err = &StatusError{Code: code}
	}
	if err != nil {
		st.reset(http2.ErrCodeCancel)
		d.release(pc)
		return nil, fmt.Errorf("hbone connect %s via %s: %w", t.Authority, t.Addr, err)
	}
	return newConn(st, t, func() { d.release(pc) }), nil
}

// Close closes every pooled connection; streams on them are cut.
func (d *Dialer) Close() error {
	d.init()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, p := range d.pools {
		for _, pc := range p.conns {
			pc.cc.close()
		}
		delete(d.pools, k)
	}
	return nil
}

// Stats counts the pooled HTTP/2 connections and their streams.
type Stats struct {
	Connections, Streams int
}

// Stats returns the pool's current size.
func (d *Dialer) Stats() Stats {
	d.init()
	d.mu.Lock()
	defer d.mu.Unlock()
	var s Stats
	for _, p := range d.pools {
		for _, pc := range p.conns {
			if pc.usable(time.Now()) || pc.streams > 0 {
				s.Connections++
				s.Streams += pc.streams
			}
		}
	}
	return s
}

// StatusError is a CONNECT answered with something else than 200.
type StatusError struct {
	Code int
	Err  error // the server side's reason; nil on the client
}

func (e *StatusError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("status %d: %v", e.Code, e.Err)
	}
	return fmt.Sprintf("status %d %s", e.Code, http.StatusText(e.Code))
}

func (e *StatusError) Unwrap() error { return e.Err }

func isStatus(err error) bool {
	var s *StatusError
	return errors.As(err, &s)
}
