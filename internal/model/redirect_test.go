package model

import (
	"net/netip"
	"testing"
)

func TestWithWaypointRedirect(t *testing.T) {
	m := &Mesh{
		Gateways: []Gateway{{Name: "wp", Namespace: "default"}},
		Workloads: []Workload{
			{Name: "app", Namespace: "default", Weight: 1},
			{Name: "wp-1", Namespace: "default", Weight: 1, Labels: map[string]string{LabelGatewayName: "wp"}},
		},
		Services: []Service{
			{Name: "l7", Namespace: "default", Labels: map[string]string{LabelUseWaypoint: "wp"},
				Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
				Ports:     []ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []Endpoint{{Workload: "default/app"}}},
			{Name: "l4", Namespace: "default", Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.2")},
				Ports: []ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []Endpoint{{Workload: "default/app"}}},
		},
	}
	out := WithWaypointRedirect(m)
	if got := out.Services[0]; len(got.Endpoints) != 1 || got.Endpoints[0].Workload != "default/wp-1" || got.Ports[0].TargetPort != 80 {
		t.Errorf("service with a waypoint: %+v, want endpoint wp-1 on port 80", got)
	}
	if got := out.Services[1]; got.Endpoints[0].Workload != "default/app" || got.Ports[0].TargetPort != 8080 {
		t.Errorf("service without a waypoint changed: %+v", got)
	}
	if m.Services[0].Endpoints[0].Workload != "default/app" || m.Services[0].Ports[0].TargetPort != 8080 {
		t.Errorf("the original mesh changed: %+v", m.Services[0])
	}
	m.Workloads = m.Workloads[:1]
	if got := WithWaypointRedirect(m).Services[0]; len(got.Endpoints) != 0 {
		t.Errorf("no waypoint instance: endpoints %v, want none (refused)", got.Endpoints)
	}
}
