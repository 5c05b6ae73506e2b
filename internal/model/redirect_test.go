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

// A workload labelled use-waypoint gets a service of its own addresses
// on every port only when the Gateway serves workloads; a service gets
// the redirect only when it serves services.
func TestWithWaypointRedirect_WaypointFor(t *testing.T) {
	for _, tc := range []struct {
		waypointFor       string
		service, workload bool
	}{
		{"", true, false}, {"service", true, false}, {"workload", false, true}, {"all", true, true}, {"none", false, false},
	} {
		gw := Gateway{Name: "wp", Namespace: "default"}
		if tc.waypointFor != "" {
			gw.Labels = map[string]string{LabelWaypointFor: tc.waypointFor}
		}
		m := &Mesh{
			Gateways: []Gateway{gw},
			Workloads: []Workload{
				{Name: "app", Namespace: "default", Weight: 1, Addresses: []netip.Addr{netip.MustParseAddr("10.1.0.5")},
					Labels: map[string]string{LabelUseWaypoint: "wp"}},
				{Name: "wp-1", Namespace: "default", Weight: 1, Labels: map[string]string{LabelGatewayName: "wp", LabelUseWaypoint: "wp"}},
			},
			Services: []Service{{Name: "app", Namespace: "default", Labels: map[string]string{LabelUseWaypoint: "wp"},
				Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
				Ports:     []ServicePort{{Port: 80, TargetPort: 8080, Protocol: ProtocolTCP}}, LBMode: LBRandom, Endpoints: []Endpoint{{Workload: "default/app"}}}},
		}
		out := WithWaypointRedirect(m)
		if err := out.Validate(); err != nil {
			t.Fatalf("waypoint-for %q: %v", tc.waypointFor, err)
		}
		if got := out.Services[0].Endpoints[0].Workload == "default/wp-1"; got != tc.service {
			t.Errorf("waypoint-for %q: service redirected %v, want %v", tc.waypointFor, got, tc.service)
		}
		var ws *Service
		for i := range out.Services {
			if out.Services[i].AnyPort() {
				ws = &out.Services[i]
			}
		}
		if (ws != nil) != tc.workload {
			t.Fatalf("waypoint-for %q: workload service %v, want %v", tc.waypointFor, ws != nil, tc.workload)
		}
		if ws == nil {
			continue
		}
		if ws.Name != "app"+WorkloadServiceSuffix || ws.Addresses[0] != netip.MustParseAddr("10.1.0.5") || ws.Ports[0].Port != 0 ||
			len(ws.Endpoints) != 1 || ws.Endpoints[0].Workload != "default/wp-1" || ws.Waypoint.Workload != "default/app" {
			t.Errorf("waypoint-for %q: workload service %+v", tc.waypointFor, ws)
		}
	}
}
