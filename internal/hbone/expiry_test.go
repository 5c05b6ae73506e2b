package hbone

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// TestDialer_RetiresConnectionsAtCertificateExpiry: a pooled connection
// takes no new stream once a certificate of its handshake has expired, so
// new connections are carried with the renewed certificates; a stream
// already open on it goes on.
func TestDialer_RetiresConnectionsAtCertificateExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a 2 s certificate to expire")
	}
	certPEM, keyPEM, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local", identity.WithCertTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	var dials atomic.Int64
	d := &Dialer{Certs: ca, DialTCP: func(ctx context.Context, t *Target) (net.Conn, error) {
		dials.Add(1)
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", t.Addr.String())
	}}
	defer d.Close()
	target := &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String()}
	dial := func() net.Conn {
		t.Helper()
		c, err := d.Dial(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c, []byte("x"))
		return c
	}
	held := dial()
	defer held.Close()
	first, err := ca.Certificate(context.Background(), clientID)
	if err != nil {
		t.Fatal(err)
	}
	c := dial()
	c.Close()
	if n := dials.Load(); n != 1 {
		t.Fatalf("a second stream before expiry opened %d connections in all, want 1", n)
	}
	time.Sleep(time.Until(first.Leaf.NotAfter) + 100*time.Millisecond)
	c = dial()
	defer c.Close()
	if n := dials.Load(); n != 2 {
		t.Fatalf("a stream after the certificate expired opened %d connections in all, want 2 (a new one)", n)
	}
	roundTrip(t, held, []byte("still open"))
	now, err := ca.Certificate(context.Background(), clientID)
	if err != nil {
		t.Fatal(err)
	}
	if now.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("the client certificate was not renewed")
	}
	c2 := dial()
	c2.Close()
	if n := dials.Load(); n != 2 {
		t.Fatalf("a stream on the renewed connection opened a third connection (%d)", n)
	}
}
