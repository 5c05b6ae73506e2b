package kubewaypoint

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestWithIstiodEndpoints: the joined mesh has the Kubernetes Services
// (labels, appProtocol) with istiod's endpoints and target ports, istiod's
// workloads (a WorkloadEntry the API server has no Pod for, service
// accounts, tunnel protocol), the Kubernetes workloads istiod does not
// know, and no endpoint for a Service istiod does not send; neither input
// changes.
func TestWithIstiodEndpoints(t *testing.T) {
	ip := netip.MustParseAddr
	kube := &model.Mesh{
		Services: []model.Service{
			{Name: "hello", Namespace: "apps", Addresses: []netip.Addr{ip("10.96.0.10")},
				Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, AppProtocol: "http"}},
				Labels:    map[string]string{model.LabelUseWaypoint: "waypoint"},
				Endpoints: []model.Endpoint{{Workload: "apps/hello-1"}}},
			{Name: "lonely", Namespace: "apps", Addresses: []netip.Addr{ip("10.96.0.11")},
				Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []model.Endpoint{{Workload: "apps/hello-1"}}},
		},
		Workloads: []model.Workload{
			{Name: "hello-1", Namespace: "apps", Addresses: []netip.Addr{ip("10.1.1.11")}, ServiceAccount: "default",
				Labels: map[string]string{"app": "hello"}},
			{Name: "waypoint", Namespace: "apps", Addresses: []netip.Addr{ip("10.1.2.20")},
				Labels: map[string]string{model.LabelGatewayName: "waypoint"}},
		},
		Gateways: []model.Gateway{{Name: "waypoint", Namespace: "apps"}},
	}
	x := &model.Mesh{
		Services: []model.Service{{Name: "hello", Namespace: "apps", Addresses: []netip.Addr{ip("10.96.0.10")},
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 9090}},
			Endpoints: []model.Endpoint{{Workload: "apps/hello-1"}, {Workload: "apps/vm-1"}}}},
		Workloads: []model.Workload{
			{Name: "hello-1", Namespace: "apps", Addresses: []netip.Addr{ip("10.1.1.11")}, ServiceAccount: "hello", TunnelProtocol: model.TunnelHBONE},
			{Name: "vm-1", Namespace: "apps", Addresses: []netip.Addr{ip("10.2.0.5")}, ServiceAccount: "vm"},
		},
	}
	before := kube.Services[0].Ports[0]
	m, notes := WithIstiodEndpoints(kube, x)

	hello, lonely := m.Services[0], m.Services[1]
	if got := hello.Endpoints; !reflect.DeepEqual(got, x.Services[0].Endpoints) {
		t.Errorf("hello's endpoints %v, want istiod's %v", got, x.Services[0].Endpoints)
	}
	if p := hello.Ports[0]; p.TargetPort != 9090 || p.AppProtocol != "http" {
		t.Errorf("hello's port %+v, want istiod's target port 9090 and Kubernetes' appProtocol http", p)
	}
	if hello.UsesWaypoint() != "apps/waypoint" {
		t.Errorf("hello lost its use-waypoint label: %v", hello.Labels)
	}
	if len(lonely.Endpoints) != 0 || len(notes) != 1 {
		t.Errorf("lonely (not in istiod's API): endpoints %v, notes %q; want none and one note", lonely.Endpoints, notes)
	}
	var keys []string
	for _, w := range m.Workloads {
		keys = append(keys, w.Key())
	}
	if want := []string{"apps/hello-1", "apps/vm-1", "apps/waypoint"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("workloads %v, want %v", keys, want)
	}
	h := m.Workload("apps/hello-1")
	if h.ServiceAccount != "hello" || h.TunnelProtocol != model.TunnelHBONE || h.Labels["app"] != "hello" {
		t.Errorf("hello-1 %+v, want istiod's account and tunnel with the Pod's labels", h)
	}
	if kube.Services[0].Ports[0] != before || len(kube.Services[0].Endpoints) != 1 || len(x.Workloads[0].Labels) != 0 {
		t.Errorf("an input changed: kube %+v, istiod %+v", kube.Services[0], x.Workloads[0])
	}
}
