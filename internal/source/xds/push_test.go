package xds

import (
	"slices"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// The scale benchmarks serve the workload API from xdstest.PushCache,
// which sends only what changed: the client must see the same meshes as
// from go-control-plane's LinearCache, through updates and deletes.
func TestWorkloadClient_PushServer(t *testing.T) {
	srv := xdstest.StartPush(t)
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
	put(t, srv.Addresses, name, svc)
	for _, w := range []xdstest.Workload{hello1, hello2} {
		name, a := w.Address()
		put(t, srv.Addresses, name, a)
	}
	put(t, srv.Authorizations, "default/allow-client", allowClient())
	a := runClient(t, NewWorkloadClient, srv.Addr())

	eps := func(m *model.Mesh) []string {
		var out []string
		for _, s := range m.Services {
			for _, e := range s.Endpoints {
				out = append(out, e.Workload)
			}
		}
		return out
	}
	m := a.next(t)
	if got := eps(m); !slices.Equal(got, []string{"default/hello-1", "default/hello-2"}) || len(m.Policies) != 1 {
		t.Fatalf("first mesh: endpoints %v, %d policies; want hello-1, hello-2 and 1 policy", got, len(m.Policies))
	}
	name4, a4 := hello4.Address()
	put(t, srv.Addresses, name4, a4)
	a.until(t, func(m *model.Mesh) bool {
		return slices.Equal(eps(m), []string{"default/hello-1", "default/hello-2", "default/hello-4"})
	})
	name2, _ := hello2.Address()
	srv.Addresses.DeleteResource(name2)
	srv.Authorizations.DeleteResource("default/allow-client")
	a.until(t, func(m *model.Mesh) bool {
		return slices.Equal(eps(m), []string{"default/hello-1", "default/hello-4"}) && len(m.Policies) == 0
	})
}
