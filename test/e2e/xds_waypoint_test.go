//go:build e2e

package e2e

import (
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// TestXds_ServiceWaypoint gives service hello a waypoint in the workload
// API, as istiod does for a Service labelled istio.io/use-waypoint: while
// the waypoint is unknown every connect to hello is refused (never sent to
// its endpoints), counted and logged; once the waypoint's service and
// instance arrive, every connection to hello lands on the instance, on
// hello's port; when the instance goes, connects are refused again.
func TestXds_ServiceWaypoint(t *testing.T) {
	m := newMesh(t)
	m.addPod("node-b", "wp", "10.1.2.14")
	m.serve("wp") // stands in for kmesh-waypoint: answers with its name on 8080
	srv := xdstest.Start(t, "")

	name, hello := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 8080, Target: 8080})
	hello.GetService().Waypoint = &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.96.0.99").AsSlice()}},
		HboneMtlsPort: 15008,
	}
	mustUpdate(t, srv.Addresses, name, hello)
	for _, w := range helloWorkloads {
		xw := xdstest.Workload{Namespace: "default", Name: w.name, Node: w.node, IPs: w.addrs}
		if w.app == "hello" {
			xw.Services = map[string][]xdstest.Port{"default/hello": {{Service: 8080, Target: 8080}}}
		}
		n, a := xw.Address()
		mustUpdate(t, srv.Addresses, n, a)
	}
	k := m.startXdsKmeshd(srv, "workload")
	url := "http://10.96.0.10:8080/"

	refused := func(t *testing.T, when string) {
		t.Helper()
		for _, r := range m.get("client", "--url", url, "--count", "5") {
			if r.Error == "" || !strings.Contains(r.Error, "refused") {
				t.Fatalf("%s: request answered by %q (error %q), want connection refused", when, r.Pod, r.Error)
			}
		}
	}
	unresolved := func(t *testing.T, want float64) {
		t.Helper()
		if got := metricSum(t, k.metrics, metrics.WaypointUnresolved, nil); got != want {
			t.Fatalf("%s = %v, want %v", metrics.WaypointUnresolved, got, want)
		}
	}

	t.Run("unknown_waypoint_refuses", func(t *testing.T) {
		refused(t, "waypoint unknown")
		unresolved(t, 1)
		k.waitLog(t, "service waypoint unknown: connections refused", 1)
		for _, s := range k.configDump(t).Services {
			if s.Name == "hello" && (s.Waypoint == nil || s.Waypoint.Address != "10.96.0.99" || s.Waypoint.Unresolved == "") {
				t.Fatalf("config dump: hello's waypoint %+v, want 10.96.0.99 unresolved", s.Waypoint)
			}
		}
	})

	v := k.configDump(t).Version
	wpName, wpSvc := xdstest.Service("default", "waypoint", []string{"10.96.0.99"}, xdstest.Port{Service: 15008, Target: 15008})
	mustUpdate(t, srv.Addresses, wpName, wpSvc)
	wp := xdstest.Workload{Namespace: "default", Name: "wp", Node: "node-b", IPs: []string{"10.1.2.14"},
		Services: map[string][]xdstest.Port{"default/waypoint": {{Service: 15008, Target: 15008}}}}
	n, a := wp.Address()
	mustUpdate(t, srv.Addresses, n, a)
	k.waitVersion(t, v+1)

	t.Run("known_waypoint_takes_every_connection", func(t *testing.T) {
		rs := m.get("client", "--url", url, "--count", "30")
		checkOnly(t, rs, "wp")
		if c := counts(rs); c["wp"] != 30 {
			t.Fatalf("answers %v, want all 30 from the waypoint instance", c)
		}
		unresolved(t, 0)
	})

	t.Run("waypoint_without_instance_refuses", func(t *testing.T) {
		v := k.configDump(t).Version
		if err := srv.Addresses.DeleteResource(wp.UID()); err != nil {
			t.Fatal(err)
		}
		k.waitVersion(t, v+1)
		refused(t, "waypoint instance gone")
		unresolved(t, 1)
	})
}
