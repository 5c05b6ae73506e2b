package xds

import (
	"slices"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// TestWaypointView_ServicesKeepTheirEndpoints: what kmeshd's build sends
// to the waypoint (a service istiod gives a waypoint balances over the
// waypoint's instances; a workload with a waypoint of its own gets a deny
// policy), the waypoint's own view does not: the service keeps its healthy
// endpoints with their service accounts, and no deny policy is made.
func TestWaypointView_ServicesKeepTheirEndpoints(t *testing.T) {
	byHost := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: xdstest.Hostname("default", "waypoint")}}}
	st := newStore()
	helloName, hello := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
	hello.GetService().Waypoint = byHost
	st.put(AddressType, helloName, "v", convertAddress(t, hello))
	wpName, wpSvc := xdstest.Service("default", "waypoint", []string{"10.96.0.99"}, xdstest.Port{Service: 15008, Target: 15008})
	st.put(AddressType, wpName, "v", convertAddress(t, wpSvc))
	for _, w := range []xdstest.Workload{
		{Namespace: "default", Name: "hello-1", Node: "node-b", IPs: []string{"10.1.1.11"}, Services: map[string][]xdstest.Port{"default/hello": {{Service: 80, Target: 8080}}}},
		{Namespace: "default", Name: "hello-2", Node: "node-b", IPs: []string{"10.1.1.12"}, Services: map[string][]xdstest.Port{"default/hello": {{Service: 80, Target: 8080}}}, Unhealthy: true},
		{Namespace: "default", Name: "wp-1", Node: "node-c", IPs: []string{"10.1.2.21"}, Services: map[string][]xdstest.Port{"default/waypoint": {{Service: 15008, Target: 15008}}}},
	} {
		name, a := w.Address()
		if w.Name == "hello-1" {
			a.GetWorkload().ServiceAccount = "hello"
			a.GetWorkload().Waypoint = byHost // waypoint-for all
		}
		st.put(AddressType, name, "v", convertAddress(t, a))
	}

	endpoints := func(b *built) []string {
		var eps []string
		for _, s := range b.mesh.Services {
			if s.Key() == "default/hello" {
				for _, e := range s.Endpoints {
					eps = append(eps, e.Workload)
				}
			}
		}
		return eps
	}
	kmeshd, view := buildWorkloadMesh(st), buildWaypointView(st)
	if got := endpoints(kmeshd); !slices.Equal(got, []string{"default/wp-1"}) {
		t.Fatalf("kmeshd's build: hello's endpoints %v, want the waypoint's instance", got)
	}
	if got := endpoints(view); !slices.Equal(got, []string{"default/hello-1"}) {
		t.Fatalf("the waypoint's view: hello's endpoints %v, want its healthy endpoint default/hello-1", got)
	}
	for _, s := range view.mesh.Services {
		if s.Key() == "default/hello" && s.Waypoint != nil {
			t.Fatalf("the waypoint's view redirects hello to %+v", s.Waypoint)
		}
	}
	if len(view.mesh.Policies) != 0 {
		t.Fatalf("the waypoint's view has policies %v, want none (no deny policy for hello-1's own waypoint)", view.mesh.Policies)
	}
	if len(kmeshd.mesh.Policies) != 1 {
		t.Fatalf("kmeshd's build has policies %v, want the deny policy of hello-1's own waypoint", kmeshd.mesh.Policies)
	}
	w := view.mesh.Workload("default/hello-1")
	if w == nil || w.ServiceAccount != "hello" || w.Waypoint != "" {
		t.Fatalf("the waypoint's view of hello-1: %+v, want service account hello and no waypoint", w)
	}
}
