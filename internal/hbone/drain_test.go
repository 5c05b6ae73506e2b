package hbone

import (
	"context"
	"net"
	"testing"
	"time"

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
