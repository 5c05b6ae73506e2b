package waypoint

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_HBONEPrincipalsFromCertificate terminates HBONE (mutual TLS 1.3,
// HTTP/2 CONNECT, a local CA) in front of the engine, as kmesh-waypoint does
// on 15008: the CONNECT authority is the service VIP:port, and L7
// authorization sees the client certificate's SPIFFE identity, not the
// identity the client's address maps to. A CONNECT to an address the
// waypoint does not serve is refused before the stream opens.
func TestProxy_HBONEPrincipalsFromCertificate(t *testing.T) {
	b := newBed(t)
	// By address the client is sa/other, which the policy does not allow:
	// only the certificate can let it in.
	b.mesh.Workloads[0].ServiceAccount = "other"
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.mesh.WaypointPolicies = []model.L7Policy{{Name: "allow-client", Namespace: "default", Action: model.ActionAllow,
		TargetRefs: []model.ParentRef{{Kind: "Gateway", Group: "gateway.networking.k8s.io", Name: "waypoint"}},
		Rules:      []model.L7Rule{{From: []model.L7Source{{Principals: []string{"cluster.local/ns/default/sa/client"}}}}}}}
	b.start()

	certPEM, keyPEM, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	wpID := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "waypoint"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := &hbone.Server{Certs: certs, Identity: func() identity.Identity { return wpID }, Connect: b.proxy.HBONEConnect}
	go srv.Serve(ctx, ln)
	d := &hbone.Dialer{Certs: certs}
	t.Cleanup(func() { d.Close() })

	request := func(sa, authority, path string) (int, error) {
		t.Helper()
		c, err := d.Dial(ctx, &hbone.Target{
			Source:      identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: sa},
			SourceAddr:  netip.MustParseAddr("127.0.0.1"),
			Destination: []identity.Identity{wpID},
			Addr:        ln.Addr().(*net.TCPAddr).AddrPort(),
			Authority:   authority,
		})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := request("client", "10.96.0.1:80", "/public"); err != nil || code != 200 {
		t.Fatalf("sa/client over HBONE: %d, %v; want 200 (the certificate's principal is allowed)", code, err)
	}
	if code, err := request("other", "10.96.0.1:80", "/public"); err != nil || code != 403 {
		t.Fatalf("sa/other over HBONE: %d, %v; want 403", code, err)
	}
	_, err = request("client", "10.96.0.2:80", "/public")
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("CONNECT to an address the waypoint does not serve: %v, want 400", err)
	}
}
