package hbone

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// testCA is a CA in memory that signs a certificate per identity.
type testCA struct {
	td    string
	key   *ecdsa.PrivateKey
	cert  *x509.Certificate
	roots *x509.CertPool

	mu     sync.Mutex
	issued map[identity.Identity]*tls.Certificate
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{td}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &testCA{td: td, key: key, cert: cert, roots: roots, issued: map[identity.Identity]*tls.Certificate{}}
}

func (ca *testCA) Certificate(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c := ca.issued[id]; c != nil {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs:        []*url.URL{id.URL()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	c := &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}
	ca.issued[id] = c
	return c, nil
}

func (ca *testCA) Roots() *x509.CertPool { return ca.roots }
func (ca *testCA) TrustDomain() string   { return ca.td }

func ident(td, ns, sa string) identity.Identity {
	return identity.Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
}

var (
	clientID = ident("cluster.local", "default", "client")
	serverID = ident("cluster.local", "default", "hello")
)

// echoUpstream is an upstream TCP server: it echoes what it reads, then
// closes when the client half-closes.
func echoUpstream(t testing.TB) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort(), &accepted
}

// tunnel runs an HBONE server for serverID on loopback whose hook dials
// the authority, after check (nil: allow).
type tunnel struct {
	addr     netip.AddrPort
	srv      *Server
	requests chan Request
}

func startServer(t testing.TB, certs identity.Source, check func(*Request) error) *tunnel {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, certs, check, l)
}

// serveOn is startServer on a listener of the caller's.
func serveOn(t testing.TB, certs identity.Source, check func(*Request) error, l net.Listener) *tunnel {
	t.Helper()
	tn := &tunnel{addr: l.Addr().(*net.TCPAddr).AddrPort(), requests: make(chan Request, 100)}
	tn.srv = &Server{
		Certs:    certs,
		Identity: func() identity.Identity { return serverID },
		Connect: func(ctx context.Context, r *Request) (net.Conn, error) {
			tn.requests <- *r
			if check != nil {
				if err := check(r); err != nil {
					return nil, err
				}
			}
			target, err := r.Target()
			if err != nil {
				return nil, err
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", target.String())
			if err != nil {
				return nil, Reject(http.StatusServiceUnavailable, err)
			}
			return c, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	go tn.srv.Serve(ctx, l)
	t.Cleanup(func() { cancel(); tn.srv.Wait() })
	return tn
}

func roundTrip(t testing.TB, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestTunnel_EchoAndHalfClose(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	d := &Dialer{Certs: ca}
	defer d.Close()

	c, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := <-tn.requests
	if r.Peer != clientID {
		t.Errorf("server saw peer %s, want %s", r.Peer, clientID)
	}
	if r.Authority != up.String() {
		t.Errorf("server saw authority %s, want %s", r.Authority, up)
	}
	roundTrip(t, c, []byte("hello over hbone"))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, past one window update
	go c.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("1 MiB echo: err %v, equal %v", err, bytes.Equal(got, big))
	}
	// Half-close: the upstream sees EOF, closes, and we read EOF.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: read %q, err %v; want EOF", rest, err)
	}
	c.Close()
}

func TestTunnel_StatusMapsToError(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, accepted := echoUpstream(t)
	tn := startServer(t, ca, func(r *Request) error {
		return Reject(http.StatusUnauthorized, errors.New("denied by policy"))
	})
	d := &Dialer{Certs: ca}
	defer d.Close()
	_, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String(),
	})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("dial: %v, want status 401", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("upstream accepted %d connections for a denied request", n)
	}
	// The check runs before any dial: still 401 for an address nobody
	// listens on.
	_, err = d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: "127.0.0.1:1",
	})
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("dial: %v, want status 401 from the check before the dial", err)
	}
}

func TestTunnel_NoUpstreamIs503(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	tn := startServer(t, ca, nil)
	d := &Dialer{Certs: ca}
	defer d.Close()
	_, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: "127.0.0.1:1",
	})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("dial: %v, want status 503", err)
	}
}

func TestTunnel_DirectTargetMismatchIs400(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, accepted := echoUpstream(t)
	tn := startServer(t, ca, func(r *Request) error {
		_, err := r.DirectTarget()
		return err
	})
	d := &Dialer{Certs: ca}
	defer d.Close()
	// The server was dialed at 127.0.0.1; an authority naming another
	// address must not be reached through it.
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), up.Port())
	_, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: other.String(),
	})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("dial: %v, want status 400", err)
	}
	if _, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String(),
	}); err != nil {
		t.Fatalf("matching authority: %v", err)
	}
	// The server dialed the upstream before its 200; the upstream's
	// Accept may still be on its way.
	for deadline := time.Now().Add(5 * time.Second); accepted.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if accepted.Load() != 1 {
		t.Fatalf("upstream accepted %d, want 1", accepted.Load())
	}
}

func TestTunnel_ClientRefusesUnexpectedServer(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	d := &Dialer{Certs: ca}
	defer d.Close()
	_, err := d.Dial(context.Background(), &Target{
		Source: clientID, Destination: []identity.Identity{ident("cluster.local", "default", "other")},
		Addr: tn.addr, Authority: up.String(),
	})
	if !errors.Is(err, ErrUnexpectedPeer) {
		t.Fatalf("dial: %v, want %v", err, ErrUnexpectedPeer)
	}
	if len(tn.requests) != 0 {
		t.Fatal("a CONNECT reached the server")
	}
}

func TestTunnel_ServerRefusesOtherCAAndTrustDomain(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	for name, client := range map[string]identity.Source{
		"another CA":           &mixedCA{certs: newTestCA(t, "cluster.local"), roots: ca},
		"another trust domain": &mixedCA{certs: sharedRootOtherTD(ca, "evil.local"), roots: ca},
	} {
		t.Run(name, func(t *testing.T) {
			d := &Dialer{Certs: client}
			defer d.Close()
			src := ident(client.TrustDomain(), "default", "client")
			_, err := d.Dial(context.Background(), &Target{
				Source: src, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String(),
			})
			if err == nil {
				t.Fatal("dial succeeded")
			}
			if len(tn.requests) != 0 {
				t.Fatal("a CONNECT reached the server")
			}
		})
	}
}

// mixedCA presents certificates of one CA and trusts the roots of another,
// as a client of another mesh that knows ours.
type mixedCA struct {
	certs identity.Source
	roots identity.Source
}

func (m *mixedCA) Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	return m.certs.Certificate(ctx, id)
}
func (m *mixedCA) Roots() *x509.CertPool { return m.roots.Roots() }
func (m *mixedCA) TrustDomain() string   { return m.certs.TrustDomain() }

// sharedRootOtherTD signs with ca's key for another trust domain: the
// chain verifies, the trust domain must not.
func sharedRootOtherTD(ca *testCA, td string) *testCA {
	return &testCA{td: td, key: ca.key, cert: ca.cert, roots: ca.roots, issued: map[identity.Identity]*tls.Certificate{}}
}

func TestTunnel_TLS13AndH2Only(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	tn := startServer(t, ca, nil)
	cert, _ := ca.Certificate(context.Background(), clientID)
	for name, cfg := range map[string]*tls.Config{
		"TLS 1.2":  {MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true},
		"http/1.1": {MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}, Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true},
		"no cert":  {MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := tls.Dial("tcp", tn.addr.String(), cfg)
			if err == nil {
				// TLS 1.3 client certificates are checked after the
				// client's Finished: the refusal shows on first read.
				c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			if err == nil {
				t.Fatal("server answered")
			}
		})
	}
}

func TestDialer_PoolsPerKey(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	var dials atomic.Int64
	d := &Dialer{Certs: ca, MaxStreams: 3, DialTCP: func(ctx context.Context, t *Target) (net.Conn, error) {
		dials.Add(1)
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", t.Addr.String())
	}}
	defer d.Close()
	target := &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String()}
	var conns []net.Conn
	for range 7 {
		c, err := d.Dial(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c, []byte("x"))
		conns = append(conns, c)
	}
	if got := dials.Load(); got != 3 {
		t.Fatalf("7 streams at 3 per connection opened %d connections, want 3", got)
	}
	if s := d.Stats(); s.Streams != 7 || s.Connections != 3 {
		t.Fatalf("stats %+v, want 3 connections, 7 streams", s)
	}
	// Another source identity never shares a connection.
	other := *target
	other.Source = ident("cluster.local", "default", "someone-else")
	c, err := d.Dial(context.Background(), &other)
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, c)
	if got := dials.Load(); got != 4 {
		t.Fatalf("a new source identity made %d connections in all, want 4", got)
	}
	for _, c := range conns {
		c.Close()
	}
	// Closed streams free their slots: the next ones reuse connections.
	c, err = d.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := dials.Load(); got != 4 {
		t.Fatalf("after streams closed a dial opened a connection (%d in all)", got)
	}
}
