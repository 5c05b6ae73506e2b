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

// TestXds_WorkloadWaypoint gives pod hello-2 a waypoint of its own in the
// workload API, as istiod does for a pod labelled istio.io/use-waypoint
// with a waypoint-for workload waypoint, a waypoint the workload API does
// not have: the mesh client's connect() to hello-2's address fails at once
// with ECONNREFUSED (its @waypoint service has no endpoint: never sent
// around the waypoint), logged, counted and shown in /config_dump; hello-3,
// without a waypoint, still answers; when the waypoint is taken away,
// hello-2 answers again. (TestWaypoint_Workload carries such traffic
// through a waypoint that exists.)
func TestXds_WorkloadWaypoint(t *testing.T) {
	m := newMesh(t)
	srv := xdstest.Start(t, "")
	wpOf := &workloadapi.GatewayAddress{
		Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
			Namespace: "default", Hostname: xdstest.Hostname("default", "waypoint")}},
		HboneMtlsPort: 15008,
	}
	var hello2 *workloadapi.Address
	var hello2Name string
	for _, w := range helloWorkloads {
		n, a := xdstest.Workload{Namespace: "default", Name: w.name, Node: w.node, IPs: w.addrs}.Address()
		if w.name == "hello-2" {
			a.GetWorkload().Waypoint = wpOf
			hello2, hello2Name = a, n
		}
		mustUpdate(t, srv.Addresses, n, a)
	}
	k := m.startXdsKmeshd(srv, "workload")
	unserved := func(t *testing.T, want float64) {
		t.Helper()
		if got := metricSum(t, k.metrics, metrics.WaypointUnserved, nil); got != want {
			t.Fatalf("%s = %v, want %v", metrics.WaypointUnserved, got, want)
		}
	}
	answers := func(t *testing.T, url, pod string) {
		t.Helper()
		rs := m.get("client", "--url", url, "--count", "3")
		checkOnly(t, rs, pod)
		if c := counts(rs); c[pod] != 3 {
			t.Fatalf("%s: answers %v, want 3 from %s", url, c, pod)
		}
	}

	t.Run("pod_with_unknown_waypoint_refused", func(t *testing.T) {
		for _, u := range []string{"http://10.1.2.12:8080/", "http://[fd00:1:2::12]:8080/"} {
			rs := m.get("client", "--url", u, "--count", "1", "--timeout", "5s")
			if len(rs) != 1 || !strings.Contains(rs[0].Error, "connect: connection refused") {
				t.Fatalf("%s: %+v, want connect: connection refused (the waypoint is unknown)", u, rs)
			}
		}
		unserved(t, 1)
		k.waitLog(t, "workload waypoint: connections to its address go through the waypoint", 1)
		k.waitLog(t, "service waypoint unknown: connections refused", 1)
		var found bool
		for _, w := range k.configDump(t).Workloads {
			if w.Name == "hello-2" {
				found = true
				if w.Waypoint != "default/"+xdstest.Hostname("default", "waypoint") {
					t.Fatalf("config dump: hello-2's waypoint %q, want default/waypoint's hostname", w.Waypoint)
				}
			} else if w.Waypoint != "" {
				t.Fatalf("config dump: %s has waypoint %q, want none", w.Name, w.Waypoint)
			}
		}
		if !found {
			t.Fatal("config dump: no workload hello-2")
		}
	})

	t.Run("pod_without_waypoint_answers", func(t *testing.T) {
		answers(t, "http://10.1.2.13:8080/", "hello-3")
	})

	t.Run("waypoint_removed_pod_answers", func(t *testing.T) {
		v := k.configDump(t).Version
		hello2.GetWorkload().Waypoint = nil
		mustUpdate(t, srv.Addresses, hello2Name, hello2)
		k.waitVersion(t, v+1)
		answers(t, "http://10.1.2.12:8080/", "hello-2")
		unserved(t, 0)
	})
}
