package hbone

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/identity"
)

func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServer_DrainHandsNewStreamsOn: a server hands its listening socket
// to another (as the tunnel's upgrade does) and drains. The stream open on
// it keeps working; the client's next stream, which would have gone on the
// same pooled connection, goes to the new server on a new connection
// without failing; the drained connection closes after its last stream.
func TestServer_DrainHandsNewStreamsOn(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := serveOn(t, ca, nil, l)
	d := &Dialer{Certs: ca}
	defer d.Close()
	target := &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: old.addr, Authority: up.String()}
	a, err := d.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	<-old.requests
	roundTrip(t, a, []byte("before the drain"))

	// The successor serves the same kernel socket (a duplicate, as
	// SCM_RIGHTS passes it); the old one closes its own and drains.
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	dup, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	succ := serveOn(t, ca, nil, dup)
	l.Close()
	old.srv.Drain()

	roundTrip(t, a, []byte("during the drain"))
	b, err := d.Dial(context.Background(), target)
	if err != nil {
		t.Fatalf("new stream while the server drains: %v", err)
	}
	defer b.Close()
	select {
	case <-succ.requests:
	case <-time.After(5 * time.Second):
		t.Fatal("the new stream did not reach the successor")
	}
	roundTrip(t, b, []byte("on the successor"))
	roundTrip(t, a, []byte("still on the old one"))
	if n := old.srv.connCount(); n != 1 {
		t.Fatalf("old server has %d connections, want the drained one", n)
	}
	a.CloseWrite()
	a.Close()
	waitFor(t, "the drained connection closes after its last stream", func() bool { return old.srv.connCount() == 0 })
}

// TestDialer_Drain: idle pooled connections close at once; one with a
// stream closes after it; new streams take no pooled connection.
func TestDialer_Drain(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	srv := startServer(t, ca, nil)
	d := &Dialer{Certs: ca}
	defer d.Close()
	target := &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: srv.addr, Authority: up.String()}
	a, err := d.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, a, []byte("a"))
	other := *target
	other.Source = ident("cluster.local", "default", "other")
	idle, err := d.Dial(context.Background(), &other)
	if err != nil {
		t.Fatal(err)
	}
	idle.Close()
	waitFor(t, "two server connections", func() bool { return srv.srv.connCount() == 2 })
	d.Drain()
	waitFor(t, "the idle connection closes", func() bool { return srv.srv.connCount() == 1 })
	roundTrip(t, a, []byte("still carried"))
	b, err := d.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stream while draining takes a connection of its own", func() bool { return srv.srv.connCount() == 2 })
	a.Close()
	b.Close()
	waitFor(t, "every connection closes after its stream", func() bool { return srv.srv.connCount() == 0 })
}

// TestH2_DrainTakesStreamsInFlight: a draining server first sends GOAWAY
// with the largest stream id and a PING; a stream the client opened before
// it read them (sent before its PING answer) is taken, not refused; the
// second GOAWAY names it as the last; a stream after is refused; the
// connection closes once its streams end.
func TestH2_DrainTakesStreamsInFlight(t *testing.T) {
	taken := make(chan *stream, 10)
	p, conns := serverWithPeer(t, func(st *stream, method, authority string, h http.Header) {
		st.respond(200, false)
		taken <- st
	})
	connect := func(id uint32) { p.headers(id, false, ":method", "CONNECT", ":authority", "10.0.0.1:80") }
	// frame reads the next frame of the kinds a test here waits for.
	frame := func() http2.Frame {
		t.Helper()
		for {
			p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := p.fr.ReadFrame()
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame, *http2.RSTStreamFrame, *http2.MetaHeadersFrame:
				return f
			case *http2.PingFrame:
				if !f.IsAck() {
					return f
				}
			}
		}
	}
	connect(1)
	hc := <-conns
	s1 := <-taken
	hc.drain()
	var ping *http2.PingFrame
	for ping == nil {
		switch f := frame().(type) {
		case *http2.GoAwayFrame:
			if f.LastStreamID != 1<<31-1 {
				t.Fatalf("first GOAWAY names stream %d, want the largest id", f.LastStreamID)
			}
		case *http2.PingFrame:
			ping = f
		}
	}
	connect(3) // sent before the client answers the PING: in flight
	var s3 *stream
	select {
	case s3 = <-taken:
	case <-time.After(5 * time.Second):
		t.Fatal("stream 3, in flight when the server drained, was not taken")
	}
	p.fr.WritePing(true, ping.Data)
	for {
		if g, ok := frame().(*http2.GoAwayFrame); ok {
			if g.LastStreamID != 3 {
				t.Fatalf("second GOAWAY names stream %d, want 3", g.LastStreamID)
			}
			break
		}
	}
	connect(5)
	for {
		if r, ok := frame().(*http2.RSTStreamFrame); ok {
			if r.StreamID != 5 || r.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("want REFUSED_STREAM on stream 5, got %v", r)
			}
			break
		}
	}
	s1.reset(http2.ErrCodeCancel)
	select {
	case <-hc.closed:
		t.Fatal("drained connection closed with a stream still open")
	case <-time.After(100 * time.Millisecond):
	}
	s3.reset(http2.ErrCodeCancel)
	select {
	case <-hc.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("drained connection still open after its last stream ended")
	}
}

// TestServer_ActiveCountsFromAccept: a connection counts from its accept,
// before its handshake (a drain that looked only at streams handed to the
// hook would end with it in flight), and stops counting when a drained
// connection closes after its last stream.
func TestServer_ActiveCountsFromAccept(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	srv := startServer(t, ca, nil)
	raw, err := net.Dial("tcp", srv.addr.String()) // no handshake yet
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a connection in its handshake counts", func() bool { return srv.srv.Active() == 1 })
	raw.Close()
	waitFor(t, "a connection that failed its handshake stops counting", func() bool { return srv.srv.Active() == 0 })

	d := &Dialer{Certs: ca}
	defer d.Close()
	c, err := d.Dial(context.Background(), &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: srv.addr, Authority: up.String()})
	if err != nil {
		t.Fatal(err)
	}
	srv.srv.Drain()
	roundTrip(t, c, []byte("drained, still served"))
	if n := srv.srv.Active(); n != 1 {
		t.Fatalf("Active %d while a drained connection carries a stream, want 1", n)
	}
	c.Close()
	waitFor(t, "the drained connection stops counting after its last stream", func() bool { return srv.srv.Active() == 0 })
}
