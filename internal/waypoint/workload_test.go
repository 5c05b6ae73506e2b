package waypoint

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_WorkloadWaypoint: a waypoint for workloads serves a connection
// to the address of a workload that uses it, forwards it to that workload
// alone on the port dialed, applies the Gateway's L7 policy and labels the
// metrics with the workload and no service; service traffic is served
// only with waypoint-for all.
func TestProxy_WorkloadWaypoint(t *testing.T) {
	for _, waypointFor := range []string{"workload", "all", "service"} {
		t.Run(waypointFor, func(t *testing.T) {
			b := newBed(t)
			b.mesh.Gateways[0].Labels = map[string]string{model.LabelWaypointFor: waypointFor}
			use := map[string]string{"app": "app", model.LabelUseWaypoint: "waypoint"}
			b.workload("app-1", 8080, use, named("app-1"))
			b.workload("app-2", 8080, use, named("app-2"))
			b.service("web", "10.96.0.1", 8080, "app", true)
			b.mesh.WaypointPolicies = []model.L7Policy{{Name: "deny-admin", Namespace: "default", Action: model.ActionDeny,
				TargetRefs: []model.ParentRef{{Kind: "Gateway", Name: "waypoint"}},
				Rules:      []model.L7Rule{{To: []model.L7Operation{{Paths: []string{"/admin"}}}}}}}
			b.start()
			pod := netip.AddrPortFrom(b.mesh.Workloads[2].Addresses[0], 8080) // app-2
			vip := netip.MustParseAddrPort("10.96.0.1:80")
			forWorkloads, forServices := waypointFor != "service", waypointFor != "workload"
			if got := b.proxy.Serves(pod); got != forWorkloads {
				t.Fatalf("serves the pod address %s: %v, want %v", pod, got, forWorkloads)
			}
			if got := b.proxy.Serves(vip); got != forServices {
				t.Fatalf("serves the VIP %s: %v, want %v", vip, got, forServices)
			}
			if !forWorkloads {
				return
			}
			dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
				c, s := net.Pipe()
				b.proxy.ServeConn(s, pod, Peer{Addr: netip.MustParseAddrPort("127.0.0.1:40000")})
				return c, nil
			}
			tr := &http.Transport{DialContext: dial}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for range 10 {
				if resp, body := get(t, c, "http://"+pod.String()+"/page"); resp.StatusCode != 200 || body != "app-2" {
					t.Fatalf("GET /page on %s: %d %q, want 200 from app-2 alone", pod, resp.StatusCode, body)
				}
			}
			if resp, _ := get(t, c, "http://"+pod.String()+"/admin"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET /admin on %s: %d, want 403 by the Gateway's policy", pod, resp.StatusCode)
			}
			counts := requestCounts(t, b.proxy)
			if counts["200/-/app-2/unknown"] != 10 {
				t.Errorf("request metrics %v, want 10 of 200 to workload app-2", counts)
			}
			d := b.proxy.Dump()
			if len(d.Workloads) != 2 || d.Workloads[1].Workload != "default/app-2" || d.Workloads[1].Ports[0] != "8080/detect" {
				t.Errorf("config dump workloads %+v, want app-1 and app-2 with port 8080 detected", d.Workloads)
			}
		})
	}
}
