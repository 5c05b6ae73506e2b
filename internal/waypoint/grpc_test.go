package waypoint

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_GRPCUnaryAndStreaming runs the real gRPC health service behind
// the waypoint: a unary Check, a server-streaming Watch that sees a status
// change, and a GRPCRoute method match.
func TestProxy_GRPCUnaryAndStreaming(t *testing.T) {
	b := newBed(t)
	addr := nextWorkloadAddr()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 9090).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	b.mesh.Workloads = append(b.mesh.Workloads, model.Workload{Name: "grpc", Namespace: "default",
		Labels: map[string]string{"app": "grpc"}, Addresses: []netip.Addr{addr}, Weight: 1, Node: "n"})
	b.service("grpc", "10.96.0.9", 9090, "grpc", true)
	b.mesh.Services[len(b.mesh.Services)-1].Ports[0].AppProtocol = "grpc"
	b.mesh.Routes = []model.Route{{Kind: model.KindGRPCRoute, Name: "health", Namespace: "default", ParentRefs: svcParent("grpc"),
		Rules: []model.RouteRule{{Matches: []model.RouteMatch{{GRPC: &model.GRPCMethodMatch{Type: model.MatchTypeExact,
			Service: "grpc.health.v1.Health"}}}, BackendRefs: []model.BackendRef{ref("grpc", 1)}}}}}
	b.start()
	dst := netip.MustParseAddrPort("10.96.0.9:80")
	cc, err := grpc.NewClient("passthrough:///grpc", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, s := net.Pipe()
			b.proxy.ServeConn(s, dst, Peer{Addr: netip.MustParseAddrPort("127.0.0.1:40001")})
			return c, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check: %v %v", r, err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v, want NotFound through the proxy", err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v %v", m, err)
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("second Watch message: %v %v", m, err)
	}
}
