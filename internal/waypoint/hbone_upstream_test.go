package waypoint

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_UpstreamHBONE: the waypoint reaches an endpoint whose tunnel
// protocol is HBONE over mutual TLS HBONE under its own certificate, with
// :authority endpointIP:targetPort to endpointIP:15008, and reuses one
// HTTP/2 connection for many requests; an endpoint that does not take HBONE
// is dialled in plaintext. The destination side is the real hbone.Server
// (the one kmeshd tunnel runs in each pod), which sees the waypoint's
// principal.
func TestProxy_UpstreamHBONE(t *testing.T) {
	b := newBed(t)
	b.workload("secure", 8080, map[string]string{"app": "secure"}, named("secure"))
	b.workload("plain", 8081, map[string]string{"app": "plain"}, named("plain"))
	b.mesh.Workloads[1].TunnelProtocol = model.TunnelHBONE
	b.mesh.Workloads[1].ServiceAccount = "secure"
	b.mesh.Workloads[2].TunnelProtocol = model.TunnelNone
	secureAddr := b.mesh.Workloads[1].Addresses[0]
	b.service("secure", "10.96.0.1", 8080, "secure", true)
	b.service("plain", "10.96.0.2", 8081, "plain", true)

	certPEM, keyPEM, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	wpID := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "waypoint"}
	podID := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "secure"}

	// The destination pod's 15008: the shared HBONE server, dialling the
	// application at the authority as kmeshd tunnel does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var mu sync.Mutex
	var peers, authorities []string
	srv := &hbone.Server{Certs: certs, Identity: func() identity.Identity { return podID },
		Connect: func(ctx context.Context, r *hbone.Request) (net.Conn, error) {
			mu.Lock()
			peers = append(peers, r.Peer.String())
			authorities = append(authorities, r.Authority)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Authority)
		}}
	go srv.Serve(ctx, ln)

	// TCP under the tunnel: the pod's address:15008 is where the waypoint
	// dials; loopback has no 15008 of ours, so the hook reaches the
	// server's port and records what was asked for.
	var dialled []netip.AddrPort
	d := &hbone.Dialer{Certs: certs, DialTCP: func(ctx context.Context, tg *hbone.Target) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, tg.Addr)
		mu.Unlock()
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", ln.Addr().String())
	}}
	t.Cleanup(func() { d.Close() })
	b.opts.HBONE = &UpstreamHBONE{Dialer: d, Identity: wpID}
	b.start()

	get := func(vip string) string {
		t.Helper()
		resp, err := b.client(vip, false).Get("http://" + vip + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", vip, resp.StatusCode, body)
		}
		return string(body)
	}
	for range 10 {
		if got := get("10.96.0.1"); got != "secure" {
			t.Fatalf("secure service answered by %q", got)
		}
	}
	if got := get("10.96.0.2"); got != "plain" {
		t.Fatalf("plain service answered by %q", got)
	}

	mu.Lock()
	defer mu.Unlock()
	want := netip.AddrPortFrom(secureAddr, 8080).String()
	if len(authorities) == 0 {
		t.Fatal("no CONNECT reached the endpoint's HBONE server")
	}
	for i := range authorities {
		if authorities[i] != want || peers[i] != wpID.String() {
			t.Fatalf("CONNECT %d: authority %s from %s; want %s from the waypoint's %s", i, authorities[i], peers[i], want, wpID)
		}
	}
	// One TLS connection to the pod's 15008 carried every stream, and
	// nothing of the plaintext endpoint went over HBONE.
	if len(dialled) != 1 || dialled[0] != netip.AddrPortFrom(secureAddr, hbone.Port) {
		t.Fatalf("HBONE TCP connections: %v; want one to %s:15008", dialled, secureAddr)
	}
	if st := d.Stats(); st.Connections != 1 {
		t.Fatalf("pooled HBONE connections: %+v; want 1", st)
	}
}
