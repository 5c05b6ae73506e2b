package xds

import (
	"net/netip"
	"slices"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// waypointStep is one response of TestWorkloadMesh_ServiceWaypoint: a
// resource put (or removed, when value is nil), then what service
// default/hello must be.
type waypointStep struct {
	name       string
	res        string
	value      *workloadapi.Address
	endpoints  []string
	unresolved bool
	// instances are the workloads known as waypoint instances.
	instances []string
}

func convertAddress(t *testing.T, a *workloadapi.Address) any {
	t.Helper()
	var v any
	var err error
	switch x := a.GetType().(type) {
	case *workloadapi.Address_Service:
		v, err = convertService(x.Service)
	case *workloadapi.Address_Workload:
		v, err = convertWorkload(x.Workload, "", nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestWorkloadMesh_ServiceWaypoint drives a service whose waypoint is
// named by address, then by hostname, through arrivals and departures of
// the waypoint and its instances: the service balances over the
// waypoint's instances on its own ports, or has no endpoint (connects are
// refused) and says why; never its own endpoints. The incremental path
// must agree with the full build after every response.
func TestWorkloadMesh_ServiceWaypoint(t *testing.T) {
	withWaypoint := func(g *workloadapi.GatewayAddress) *workloadapi.Address {
		_, a := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
		a.GetService().Waypoint = g
		return a
	}
	byAddr := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.96.0.99").AsSlice()}}}
	byHost := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: xdstest.Hostname("default", "waypoint")}}}
	byPod := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.1.2.21").AsSlice()}}}
	helloName, _ := xdstest.Service("default", "hello", nil)
	wpName, wpSvc := xdstest.Service("default", "waypoint", []string{"10.96.0.99"}, xdstest.Port{Service: 15008, Target: 15008})
	pod := func(name, ip, svc string) (string, *workloadapi.Address) {
		return xdstest.Workload{Namespace: "default", Name: name, Node: "node-b", IPs: []string{ip},
			Services: map[string][]xdstest.Port{svc: {{Service: 80, Target: 8080}}}}.Address()
	}
	h1, h1a := pod("hello-1", "10.1.1.11", "default/hello")
	w1, w1a := pod("wp-1", "10.1.2.21", "default/waypoint")
	w2, w2a := pod("wp-2", "10.1.2.22", "default/waypoint")

	steps := []waypointStep{
		{name: "service and endpoint, waypoint unknown", res: helloName, value: withWaypoint(byAddr), unresolved: true},
		{name: "its own endpoint is never used", res: h1, value: h1a, unresolved: true},
		{name: "waypoint service without instance", res: wpName, value: wpSvc, unresolved: true},
		{name: "an instance", res: w1, value: w1a, endpoints: []string{"default/wp-1"}, instances: []string{"default/wp-1"}},
		{name: "a second instance", res: w2, value: w2a, endpoints: []string{"default/wp-1", "default/wp-2"}, instances: []string{"default/wp-1", "default/wp-2"}},
		{name: "by hostname", res: helloName, value: withWaypoint(byHost), endpoints: []string{"default/wp-1", "default/wp-2"}, instances: []string{"default/wp-1", "default/wp-2"}},
		{name: "instance gone", res: w1, endpoints: []string{"default/wp-2"}, instances: []string{"default/wp-2"}},
		{name: "waypoint service gone", res: wpName, unresolved: true},
		{name: "a workload as waypoint, not there", res: helloName, value: withWaypoint(byPod), unresolved: true},
		{name: "the workload arrives", res: w1, value: w1a, endpoints: []string{"default/wp-1"}, instances: []string{"default/wp-1"}},
		{name: "no waypoint any more", res: helloName, value: withWaypoint(nil), endpoints: []string{"default/hello-1"}},
	}
	st := newStore()
	state := model.NewState()
	b := buildWorkloadMesh(st)
	ix := newWorkloadIndex(st, b)
	for _, s := range steps {
		old := map[string]*entry{s.res: st.get(AddressType, s.res)}
		if s.value == nil {
			st.remove(AddressType, s.res)
		} else {
			st.put(AddressType, s.res, "v", convertAddress(t, s.value))
		}
		c, _, full := ix.delta(st, AddressType, old)
		wb := buildWorkloadMesh(st)
		want := wb.mesh
		if full {
			c = state.DiffMesh(want)
			ix = newWorkloadIndex(st, wb)
		}
		if err := state.Check(c); err != nil {
			t.Fatalf("%s: changes %s do not apply: %v", s.name, c, err)
		}
		state.Apply(c)
		if d := state.DiffMesh(want); !d.Empty() {
			t.Fatalf("%s: the changes differ from the full build by %s", s.name, d)
		}
		hello := state.Service("default/hello")
		if hello == nil {
			t.Fatalf("%s: service default/hello is not in the mesh", s.name)
		}
		var eps []string
		for _, e := range hello.Endpoints {
			eps = append(eps, e.Workload)
		}
		if !slices.Equal(eps, s.endpoints) {
			t.Fatalf("%s: endpoints %v, want %v", s.name, eps, s.endpoints)
		}
		gotUnresolved := hello.Waypoint != nil && hello.Waypoint.Unresolved != ""
		if gotUnresolved != s.unresolved {
			t.Fatalf("%s: waypoint %+v, want unresolved %v", s.name, hello.Waypoint, s.unresolved)
		}
		// The workload API has no labels: the build marks the waypoint's
		// instances, which a client of their own node reaches over HBONE
		// when the mesh has a CA (and in plaintext without one).
		var instances []string
		for _, w := range state.Mesh().Workloads {
			if w.IsWaypoint() {
				instances = append(instances, w.Key())
				if !w.TunnelledFrom(w.Node, true) || w.TunnelledFrom(w.Node, false) {
					t.Fatalf("%s: waypoint instance %s tunnelled from its own node: with a CA %v, without %v, want true, false",
						s.name, w.Key(), w.TunnelledFrom(w.Node, true), w.TunnelledFrom(w.Node, false))
				}
			} else if w.TunnelledFrom(w.Node, true) {
				t.Fatalf("%s: %s, not a waypoint instance, is tunnelled from its own node", s.name, w.Key())
			}
		}
		if !slices.Equal(instances, s.instances) {
			t.Fatalf("%s: waypoint instances %v, want %v", s.name, instances, s.instances)
		}
		wantTarget := uint16(80) // the waypoint listens on the service's own port
		if hello.Waypoint == nil {
			wantTarget = 8080
		}
		if p := hello.Ports; len(p) != 1 || p[0].TargetPort != wantTarget {
			t.Fatalf("%s: ports %+v, want 80 -> %d", s.name, p, wantTarget)
		}
	}
}

// TestWorkloadMesh_WorkloadWaypoint drives a workload that istiod gives a
// waypoint of its own, before and after the waypoint and its instance
// arrive: its own addresses are a service on every port balanced over the
// waypoint's instances (none: refused), and the workload carries the deny
// policy that refuses connections to it from anyone but the waypoint's
// instances, until it has no waypoint any more. The incremental path must agree with
// the full build after every response.
func TestWorkloadMesh_WorkloadWaypoint(t *testing.T) {
	byHost := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: xdstest.Hostname("default", "waypoint")}}}
	dbName, plain := xdstest.Workload{Namespace: "default", Name: "db-1", Node: "node-b", IPs: []string{"10.1.1.31"},
		Services: map[string][]xdstest.Port{"default/db": {{Service: 5432, Target: 5432}}}}.Address()
	withWaypoint := func() *workloadapi.Address {
		_, a := xdstest.Workload{Namespace: "default", Name: "db-1", Node: "node-b", IPs: []string{"10.1.1.31"},
			Services: map[string][]xdstest.Port{"default/db": {{Service: 5432, Target: 5432}}}}.Address()
		a.GetWorkload().Waypoint = byHost
		return a
	}
	dbSvcName, dbSvc := xdstest.Service("default", "db", []string{"10.96.0.31"}, xdstest.Port{Service: 5432, Target: 5432})
	wpName, wpSvc := xdstest.Service("default", "waypoint", []string{"10.96.0.99"}, xdstest.Port{Service: 15008, Target: 15008})
	w1, w1a := xdstest.Workload{Namespace: "default", Name: "wp-1", Node: "node-b", IPs: []string{"10.1.2.21"},
		Services: map[string][]xdstest.Port{"default/waypoint": {{Service: 15008, Target: 15008}}}}.Address()
	policy := "kmesh-system/waypoint-not-served-default.db-1"

	steps := []struct {
		name, res string
		value     *workloadapi.Address
		refused   bool     // the workload carries the deny policy (and has its @waypoint service)
		spared    []string // source addresses the policy spares
		instances []string // the endpoints of its @waypoint service
	}{
		{name: "service", res: dbSvcName, value: dbSvc},
		{name: "workload without waypoint", res: dbName, value: plain},
		{name: "waypoint assigned, unknown", res: dbName, value: withWaypoint(), refused: true},
		{name: "waypoint service without instance", res: wpName, value: wpSvc, refused: true},
		{name: "an instance", res: w1, value: w1a, refused: true, spared: []string{"10.1.2.21/32"}, instances: []string{"default/wp-1"}},
		{name: "instance gone", res: w1, refused: true},
		{name: "no waypoint any more", res: dbName, value: plain},
	}
	st := newStore()
	state := model.NewState()
	b := buildWorkloadMesh(st)
	ix := newWorkloadIndex(st, b)
	for _, s := range steps {
		old := map[string]*entry{s.res: st.get(AddressType, s.res)}
		if s.value == nil {
			st.remove(AddressType, s.res)
		} else {
			st.put(AddressType, s.res, "v", convertAddress(t, s.value))
		}
		c, _, full := ix.delta(st, AddressType, old)
		wb := buildWorkloadMesh(st)
		want := wb.mesh
		if err := want.Validate(); err != nil {
			t.Fatalf("%s: the build is not a valid mesh: %v", s.name, err)
		}
		if full {
			c = state.DiffMesh(want)
			ix = newWorkloadIndex(st, wb)
		}
		if err := state.Check(c); err != nil {
			t.Fatalf("%s: changes %s do not apply: %v", s.name, c, err)
		}
		state.Apply(c)
		if d := state.DiffMesh(want); !d.Empty() {
			t.Fatalf("%s: the changes differ from the full build by %s", s.name, d)
		}
		db := state.Workload("default/db-1")
		if db == nil {
			continue
		}
		// Connections to the workload's own address go to the waypoint's
		// instances on every port (none: refused).
		ws := state.Service("default/db-1" + model.WorkloadServiceSuffix)
		if (ws != nil) != s.refused {
			t.Fatalf("%s: workload service %v, want %v", s.name, ws != nil, s.refused)
		}
		if ws != nil {
			var eps []string
			for _, e := range ws.Endpoints {
				eps = append(eps, e.Workload)
			}
			if !ws.AnyPort() || ws.Waypoint.Workload != "default/db-1" || !slices.Equal(eps, s.instances) ||
				(ws.Waypoint.Unresolved == "") != (len(s.instances) > 0) || ws.Addresses[0] != netip.MustParseAddr("10.1.1.31") {
				t.Fatalf("%s: workload service %+v (waypoint %+v), want every port of 10.1.1.31 to %v", s.name, ws, ws.Waypoint, s.instances)
			}
		}
		if got := slices.Contains(db.Policies, policy); got != s.refused {
			t.Fatalf("%s: workload policies %v, want %s: %v", s.name, db.Policies, policy, s.refused)
		}
		if wantWp := map[bool]string{true: "default/" + xdstest.Hostname("default", "waypoint")}[s.refused]; db.Waypoint != wantWp {
			t.Fatalf("%s: workload waypoint %q, want %q", s.name, db.Waypoint, wantWp)
		}
		var p *model.Policy
		for _, mp := range state.Mesh().Policies {
			if mp.Key() == policy {
				p = &mp
			}
		}
		if (p != nil) != s.refused {
			t.Fatalf("%s: policy %s in the mesh: %v, want %v", s.name, policy, p != nil, s.refused)
		}
		if p == nil {
			continue
		}
		if p.Action != model.ActionDeny || p.Scope != model.ScopeWorkloadSelector || len(p.Rules) != 1 {
			t.Fatalf("%s: policy %+v, want one deny rule for the workload", s.name, p)
		}
		var spared []string
		for _, c := range p.Rules[0].Clauses {
			for _, m := range c.Matches {
				if len(m.NotSourceIPs) == 0 || len(m.Principals)+len(m.SourceIPs)+len(m.DestinationPorts) > 0 {
					t.Fatalf("%s: match %+v, want only not-source addresses", s.name, m)
				}
				for _, a := range m.NotSourceIPs {
					spared = append(spared, a.String())
				}
			}
		}
		if !slices.Equal(spared, s.spared) {
			t.Fatalf("%s: policy spares %v, want %v", s.name, spared, s.spared)
		}
	}
}

// TestWorkloadMesh_WorkloadWaypointNameClash: a control-plane policy that
// already has the deny policy's name does not let the workload through:
// it is refused under a numbered name.
func TestWorkloadMesh_WorkloadWaypointNameClash(t *testing.T) {
	st := newStore()
	clash := &model.Policy{Name: WaypointNotServedName("default", "db-1"), Namespace: WaypointNotServedNamespace,
		Scope: model.ScopeGlobal, Action: model.ActionAllow, Rules: []model.PolicyRule{{}}}
	st.put(AuthorizationType, "clash", "v", clash)
	name, a := xdstest.Workload{Namespace: "default", Name: "db-1", Node: "node-b", IPs: []string{"10.1.1.31"}}.Address()
	a.GetWorkload().Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.96.0.99").AsSlice()}}}
	st.put(AddressType, name, "v", convertAddress(t, a))
	m := buildWorkloadMesh(st).mesh
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	want := clash.Key() + "-2"
	if len(m.Workloads) != 1 || !slices.Equal(m.Workloads[0].Policies, []string{want}) {
		t.Fatalf("workloads %+v, want db-1 with policy %s", m.Workloads, want)
	}
	for _, p := range m.Policies {
		if p.Key() == want && p.Action == model.ActionDeny && len(p.Rules) == 1 && len(p.Rules[0].Clauses) == 0 {
			return
		}
	}
	t.Fatalf("policies %+v, want %s denying every connection", m.Policies, want)
}
