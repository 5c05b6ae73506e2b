//go:build e2e

package e2e

import (
	"context"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// TestXds runs kmeshd on node-a with an xDS control plane (go-control-plane
// in this test process, on 127.0.0.1) as its only config source: the
// service address exists only in xDS. xDS enrolls nothing, so the client
// pod is enrolled with --enroll-netns.
func TestXds(t *testing.T) {
	t.Run("workload", func(t *testing.T) {
		m := newMesh(t)
		srv := helloXdsServer(t)
		k := m.startXdsKmeshd(srv, "workload")
		checkXdsTraffic(t, m, k, func() {
			if err := srv.Addresses.DeleteResource(xdstest.Workload{Namespace: "default", Name: "hello-2"}.UID()); err != nil {
				t.Fatal(err)
			}
		})
	})

	t.Run("ads", func(t *testing.T) {
		m := newMesh(t)
		srv := xdstest.Start(t, "")
		snapshot := func(version string, hellos ...string) {
			var eps []xdstest.Endpoint
			for _, w := range helloWorkloads {
				for _, h := range hellos {
					if w.name == h {
						for _, ip := range w.addrs {
							eps = append(eps, xdstest.Endpoint{IP: ip, Port: 8080})
						}
					}
				}
			}
			snap, err := cache.NewSnapshot(version, map[string][]types.Resource{
				xdstest.ClusterType:  {xdstest.EDSCluster("hello")},
				xdstest.EndpointType: {xdstest.LoadAssignment("hello", eps...)},
				xdstest.ListenerType: {
					xdstest.TCPListener("10.96.0.10_80", "10.96.0.10", 80, "hello"),
					xdstest.TCPListener("fd00:96::10_80", "fd00:96::10", 80, "hello"),
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			id := "sidecar~127.0.0.1~kmesh-node-a.kmesh-system~kmesh-system.svc.cluster.local"
			if err := srv.Snapshots.SetSnapshot(context.Background(), id, snap); err != nil {
				t.Fatal(err)
			}
		}
		snapshot("1", allHello...)
		k := m.startXdsKmeshd(srv, "ads")
		checkXdsTraffic(t, m, k, func() { snapshot("2", "hello-1", "hello-3") })
	})
}

// helloXdsServer serves examples/hello.yaml's service and workloads over
// the ambient workload API.
func helloXdsServer(t *testing.T) *xdstest.Server {
	t.Helper()
	srv := xdstest.Start(t, "")
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10", "fd00:96::10"}, xdstest.Port{Service: 80, Target: 8080})
	mustUpdate(t, srv.Addresses, name, svc)
	for _, w := range helloWorkloads {
		xw := xdstest.Workload{Namespace: "default", Name: w.name, Node: w.node, IPs: w.addrs}
		if w.app == "hello" {
			xw.Services = map[string][]xdstest.Port{"default/hello": {{Service: 80, Target: 8080}}}
		}
		name, a := xw.Address()
		mustUpdate(t, srv.Addresses, name, a)
	}
	return srv
}

// startXdsKmeshd starts kmeshd on node-a with the xDS server as its config
// source and the client pod enrolled statically.
func (m *mesh) startXdsKmeshd(srv *xdstest.Server, mode string) *kmeshd {
	m.t.Helper()
	return m.startKmeshdBin(m.kmeshd, "node-a", "", "--xds-address", srv.Addr(), "--xds-mode", mode,
		"--enroll-netns", m.pods["client"].NetnsPath)
}

// checkXdsTraffic checks that the client reaches every hello pod through
// the xDS-only service address, then that after removeHello2 new
// connections reach only hello-1 and hello-3.
func checkXdsTraffic(t *testing.T, m *mesh, k *kmeshd, removeHello2 func()) {
	t.Helper()
	for _, url := range []string{"http://10.96.0.10/", "http://[fd00:96::10]/"} {
		rs := m.get("client", "--url", url, "--count", "60")
		checkOnly(t, rs, allHello...)
		if c := counts(rs); len(c) != 3 {
			t.Fatalf("%s: answers %v, want all of %v", url, c, allHello)
		}
	}
	if d := k.configDump(t); len(d.Enrolled) != 1 {
		t.Fatalf("enrolled %v, want the client's netns only", d.Enrolled)
	}
	v := k.configDump(t).Version
	removeHello2()
	k.waitVersion(t, v+1)
	rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
	checkOnly(t, rs, "hello-1", "hello-3")
	if c := counts(rs); len(c) != 2 {
		t.Fatalf("answers %v after removing hello-2, want hello-1 and hello-3", c)
	}
}

func mustUpdate(t *testing.T, c *cache.LinearCache, name string, res types.Resource) {
	t.Helper()
	if err := c.UpdateResource(name, res); err != nil {
		t.Fatal(err)
	}
}
