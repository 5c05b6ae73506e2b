package tunnel

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
)

var (
	clientID = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}
	helloID  = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "hello"}
)

// testTunnel is a tunnel with a state (client on node-a, hello-2 on
// node-b) and a local CA, not running: no pod, no netns.
func testTunnel(t testing.TB) *Tunnel {
	t.Helper()
	certPEM, keyPEM, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	tn, err := New(Config{Node: "node-a", Certs: certs})
	if err != nil {
		t.Fatal(err)
	}
	w := func(name, node, sa, addr string) model.Workload {
		return model.Workload{Name: name, Namespace: "default", Node: node, ServiceAccount: sa, Weight: 1,
			Addresses: []netip.Addr{netip.MustParseAddr(addr)}}
	}
	tn.view.Store(newView(&State{Node: "node-a", MeshHasCA: true, Mesh: &model.Mesh{Workloads: []model.Workload{
		w("client", "node-a", "client", "10.1.1.10"), w("hello-2", "node-b", "hello", "10.1.2.12"),
	}}}))
	return tn
}

// pair is a connected loopback TCP pair: the application's end and the
// tunnel's (accepted) end.
func pair(t *testing.T) (app, tun *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func move(t *testing.T, from, to net.Conn, n int) {
	t.Helper()
	if _, err := from.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(to, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
}

// TestLive_ListsOpenConnectionsWithBytesAndPrincipals: an outbound
// connection the tunnel carries is listed with both workloads, both
// proven identities, the HBONE peer, and the application's bytes from
// the client's side as the kernel counts them on the tunnel's socket;
// its end report takes it off the list.
func TestLive_ListsOpenConnectionsWithBytesAndPrincipals(t *testing.T) {
	tn := testTunnel(t)
	app, sock := pair(t)
	ev := Event{Direction: Outbound, Open: true, Start: time.Now(), Pod: "default/client", Source: clientID, Destination: helloID,
		Client: netip.MustParseAddrPort("10.1.1.10:41000"), Target: netip.MustParseAddrPort("10.1.2.12:8080"),
		Peer: netip.MustParseAddrPort("10.1.2.12:15008")}
	tn.live.track(ev, sock)
	move(t, app, sock, 100) // the client's request
	move(t, sock, app, 40)  // the answer

	var got []api.Connection
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = tn.Connections()
		if len(got) == 1 && got[0].BytesReceived == 40 { // acknowledged
			break
		}
	}
	want := api.Connection{
		Source:      api.Peer{Workload: "default/client", Address: "10.1.1.10:41000"},
		Destination: api.Peer{Workload: "default/hello-2", Address: "10.1.2.12:8080"},
		BytesSent:   100, BytesReceived: 40, Start: ev.Start.UTC(), State: "established",
		Tunnel: &api.ConnTunnel{Direction: "outbound", Peer: "10.1.2.12:15008",
			SourcePrincipal: "spiffe://cluster.local/ns/default/sa/client", DestinationPrincipal: "spiffe://cluster.local/ns/default/sa/hello"},
	}
	if len(got) != 1 {
		t.Fatalf("%d connections listed, want 1", len(got))
	}
	gj, _ := json.Marshal(got[0])
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Fatalf("listed\n%s\nwant\n%s", gj, wj)
	}

	end := ev
	end.Open = false
	tn.live.forget(end)
	if got := tn.Connections(); len(got) != 0 {
		t.Fatalf("after its end: %d connections listed, want 0", len(got))
	}
}

// TestLive_InboundBytesLeaveOutTheSYN: inbound, the tunnel dialed the
// application: what it sent is the client's request, less its SYN.
func TestLive_InboundBytesLeaveOutTheSYN(t *testing.T) {
	tn := testTunnel(t)
	srv, dialed := pair(t) // the pair's dialing end is the tunnel's here
	ev := Event{Direction: Inbound, Open: true, Start: time.Now(), Pod: "default/hello-2", Source: clientID, Destination: helloID,
		Client: netip.MustParseAddrPort("10.1.1.10:50000"), Target: netip.MustParseAddrPort("10.1.2.12:8080"),
		Peer: netip.MustParseAddrPort("10.1.1.10:50000")}
	tn.live.track(ev, srv)
	move(t, srv, dialed, 7)  // the request, from the tunnel's socket
	move(t, dialed, srv, 11) // the application's answer
	var got []api.Connection
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = tn.Connections(); len(got) == 1 && got[0].BytesSent == 7 {
			break
		}
	}
	if len(got) != 1 || got[0].BytesSent != 7 || got[0].BytesReceived != 11 || got[0].Tunnel.Direction != "inbound" ||
		got[0].Source.Workload != "default/client" || got[0].Destination.Workload != "default/hello-2" {
		t.Fatalf("listed %+v, want client -> hello-2, 7 bytes sent, 11 received, inbound", got)
	}
}

// TestReport_CountsOncePerReporterWithPrincipals: the tunnel's metrics
// count an outbound connection as reporter source and an inbound one as
// reporter destination, both with the proven principals and mutual_tls;
// a refused connection is not counted.
func TestReport_CountsOncePerReporterWithPrincipals(t *testing.T) {
	tn := testTunnel(t)
	tn.cfg.Metrics = metrics.New(metrics.Sources{}, nil)
	base := Event{Start: time.Now(), Source: clientID, Destination: helloID,
		Client: netip.MustParseAddrPort("10.1.1.10:41000"), Target: netip.MustParseAddrPort("10.1.2.12:8080")}
	out := base
	out.Direction, out.Pod = Outbound, "default/client"
	in := base
	in.Direction, in.Pod = Inbound, "default/hello-2"
	for _, ev := range []Event{out, in} {
		open := ev
		open.Open = true
		tn.report(open)
		ev.Sent, ev.Received = 100, 40
		tn.report(ev)
	}
	refused := out
	refused.Err = io.EOF
	tn.report(refused)

	rec := httptest.NewRecorder()
	tn.cfg.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	common := `connection_security_policy="mutual_tls",destination_principal="spiffe://cluster.local/ns/default/sa/hello",destination_service="unknown",destination_workload="hello-2",destination_workload_namespace="default",`
	for _, reporter := range []string{"source", "destination"} {
		for metric, want := range map[string]string{
			"istio_tcp_connections_opened_total": "1", "istio_tcp_connections_closed_total": "1",
			"istio_tcp_received_bytes_total": "100", "istio_tcp_sent_bytes_total": "40",
		} {
			line := metric + "{" + common + `reporter="` + reporter + `",request_protocol="tcp",response_flags="-",source_principal="spiffe://cluster.local/ns/default/sa/client",source_workload="client",source_workload_namespace="default"} ` + want
			if !containsLine(body, line) {
				t.Errorf("missing %s", line)
			}
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

func containsLine(body, line string) bool {
	for l := range strings.Lines(body) {
		if strings.TrimSuffix(l, "\n") == line {
			return true
		}
	}
	return false
}

// TestHandler_CertsAreTheTunnels: the tunnel's /certs lists the
// certificate its cache serves (the one a handshake gets) and says who
// serves it.
func TestHandler_CertsAreTheTunnels(t *testing.T) {
	tn := testTunnel(t)
	served, err := tn.cfg.Certs.Certificate(context.Background(), clientID)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	tn.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/certs", nil))
	var doc api.Certs
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if doc.ServedBy != ServedBy || len(doc.Certificates) != 1 || doc.Certificates[0].Identity != clientID.String() ||
		doc.Certificates[0].Serial != served.Leaf.SerialNumber.Text(16) || len(doc.Roots) != 1 {
		t.Fatalf("/certs = %s, want the served serial %s", rec.Body, served.Leaf.SerialNumber.Text(16))
	}
	rec = httptest.NewRecorder()
	tn.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/connections", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "[]\n" {
		t.Fatalf("/connections with none open: %d %q", rec.Code, rec.Body)
	}
}
