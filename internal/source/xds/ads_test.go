package xds

import (
	"context"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// sidecarID is the node id of testConfig's client in ADS mode.
const sidecarID = "sidecar~127.0.0.1~kmesh-node-a.kmesh-system~kmesh-system.svc.cluster.local"

func setSnapshot(t *testing.T, srv *xdstest.Server, version string, res map[string][]types.Resource) {
	t.Helper()
	snap, err := cache.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Snapshots.SetSnapshot(context.Background(), sidecarID, snap); err != nil {
		t.Fatal(err)
	}
}

func helloSnapshot(eps ...xdstest.Endpoint) map[string][]types.Resource {
	return map[string][]types.Resource{
		ClusterType: {
			xdstest.EDSCluster("hello"),
			// Istio's PassthroughCluster: valid, but nothing to balance.
			&clusterv3.Cluster{Name: "PassthroughCluster", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}},
		},
		EndpointType: {xdstest.LoadAssignment("hello", eps...)},
		ListenerType: {
			xdstest.TCPListener("10.96.0.10_80", "10.96.0.10", 80, "hello"),
			xdstest.TCPListener("fd00:96::10_80", "fd00:96::10", 80, "hello"),
			// Bound to every address: skipped.
			xdstest.TCPListener("virtualOutbound", "0.0.0.0", 15001, "PassthroughCluster"),
		},
	}
}

var helloEndpoints = []xdstest.Endpoint{
	{IP: "10.1.1.11", Port: 8080},
	{IP: "10.1.2.12", Port: 8080, Weight: 500},
	{IP: "10.1.2.13", Port: 8080, Unhealthy: true},
}

func TestADSClient_ClustersAndListenersBecomeServices(t *testing.T) {
	srv := xdstest.Start(t, "")
	setSnapshot(t, srv, "1", helloSnapshot(helloEndpoints...))
	a := runClient(t, NewADSClient, srv.Addr())

	m := a.next(t)
	want := "service /hello random [10.96.0.10 fd00:96::10] 80->8080 endpoints /hello/10.1.1.11 /hello/10.1.2.12\n" +
		"workload /hello/10.1.1.11 [10.1.1.11] node= weight=1\n" +
		"workload /hello/10.1.2.12 [10.1.2.12] node= weight=128\n"
	if got := meshString(m); got != want {
		t.Fatalf("mesh:\n%s\nwant:\n%s", got, want)
	}
	first, _ := srv.WaitRequest(t, 0, func(r *discovery.DiscoveryRequest) bool { return r.GetNode() != nil })
	if first.GetNode().GetId() != sidecarID {
		t.Errorf("node id %q, want %q", first.GetNode().GetId(), sidecarID)
	}
	for _, typ := range []string{ClusterType, ListenerType, EndpointType} {
		srv.WaitRequest(t, 0, func(r *discovery.DiscoveryRequest) bool {
			return r.GetTypeUrl() == typ && r.GetVersionInfo() == "1" && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil
		})
	}

	t.Run("endpoint_removed", func(t *testing.T) {
		setSnapshot(t, srv, "2", helloSnapshot(helloEndpoints[1:]...))
		m := a.until(t, func(m *model.Mesh) bool { return len(m.Workloads) == 1 })
		if eps := endpointsOf(m, "/hello"); !slices.Equal(eps, []string{"/hello/10.1.2.12"}) {
			t.Fatalf("endpoints %v", eps)
		}
	})
}

func TestADSClient_RejectsMalformedResourceAlone(t *testing.T) {
	srv := xdstest.Start(t, "")
	setSnapshot(t, srv, "1", helloSnapshot(helloEndpoints...))
	a := runClient(t, NewADSClient, srv.Addr())
	a.next(t)
	_, skip := srv.WaitRequest(t, 0, func(r *discovery.DiscoveryRequest) bool {
		return r.GetTypeUrl() == EndpointType && r.GetVersionInfo() == "1"
	})

	// Version 2: hello's endpoints disagree on the port (rejected, hello
	// keeps its version-1 endpoints); a new cluster and listener are fine.
	res := helloSnapshot(xdstest.Endpoint{IP: "10.1.1.11", Port: 8080}, xdstest.Endpoint{IP: "10.1.2.12", Port: 9090})
	res[ClusterType] = append(res[ClusterType], xdstest.EDSCluster("world"))
	res[EndpointType] = append(res[EndpointType], xdstest.LoadAssignment("world", xdstest.Endpoint{IP: "10.1.3.1", Port: 7070}))
	res[ListenerType] = append(res[ListenerType], xdstest.TCPListener("10.96.0.20_70", "10.96.0.20", 70, "world"))
	setSnapshot(t, srv, "2", res)

	nack, _ := srv.WaitRequest(t, skip, func(r *discovery.DiscoveryRequest) bool { return r.GetErrorDetail() != nil })
	if nack.GetTypeUrl() != EndpointType || nack.GetVersionInfo() != "1" {
		t.Errorf("NACK of %s version %q, want endpoints keeping version 1", nack.GetTypeUrl(), nack.GetVersionInfo())
	}
	want := "resource hello: endpoint 0.1: port 9090 differs from port 8080 of the others; all endpoints of a cluster must share a port"
	if msg := nack.GetErrorDetail().GetMessage(); msg != want {
		t.Errorf("NACK %q, want %q", msg, want)
	}
	m := a.until(t, func(m *model.Mesh) bool { return len(endpointsOf(m, "/world")) == 1 })
	if eps := endpointsOf(m, "/hello"); len(eps) != 2 {
		t.Fatalf("hello endpoints %v, want the two of version 1\n%s", eps, meshString(m))
	}
	if s := m.Services[0]; s.Key() != "/hello" || s.Ports[0].TargetPort != 8080 {
		t.Fatalf("hello: %+v", s)
	}
	if !strings.Contains(a.log.String(), "config rejected") {
		t.Errorf("no warning logged")
	}
}
