package kubewaypoint

import (
	"fmt"
	"slices"

	"github.com/kmesh-go/kmesh/internal/model"
)

// WithIstiodEndpoints is the waypoint's mesh when istiod's workload API is
// where its endpoints come from (kmesh-waypoint --xds-address): the
// objects of kube (Services with their labels and appProtocols, Gateways,
// routes, policies; built from the API server) with the endpoints and
// workloads of x, the workload API's view (internal/source/xds
// NewWaypointClient), as Istio's waypoint gets its endpoints from istiod.
//
//   - Workloads are x's: addresses, health, tunnel protocol, locality,
//     capacity and the service account an HBONE upstream's certificate is
//     checked against are istiod's. A workload istiod does not know keeps
//     kube's (the waypoint's own pods, say, before istiod sends them); an
//     x workload without labels takes kube's of the same name, for the
//     metrics' labels.
//   - A Service's endpoints and target ports are those of x's service of the
//     same namespace/name; a Service istiod does not send has no endpoint
//     (its requests get 503 until it does), with a note.
//
// Neither mesh is modified.
func WithIstiodEndpoints(kube, x *model.Mesh) (*model.Mesh, []string) {
	var notes []string
	m := *kube
	xw := make(map[string]*model.Workload, len(x.Workloads))
	for i := range x.Workloads {
		xw[x.Workloads[i].Key()] = &x.Workloads[i]
	}
	kw := make(map[string]*model.Workload, len(kube.Workloads))
	for i := range kube.Workloads {
		kw[kube.Workloads[i].Key()] = &kube.Workloads[i]
	}
	xs := make(map[string]*model.Service, len(x.Services))
	for i := range x.Services {
		xs[x.Services[i].Key()] = &x.Services[i]
	}
	m.Workloads = make([]model.Workload, 0, len(x.Workloads))
	for _, w := range x.Workloads {
		if len(w.Labels) == 0 {
			if kw := kw[w.Key()]; kw != nil {
				w.Labels = kw.Labels
			}
		}
		m.Workloads = append(m.Workloads, w)
	}
	for _, kw := range kube.Workloads {
		if xw[kw.Key()] == nil {
			m.Workloads = append(m.Workloads, kw)
		}
	}
	m.Services = slices.Clone(kube.Services)
	for i := range m.Services {
		s := &m.Services[i]
		xs := xs[s.Key()]
		if xs == nil {
			notes = append(notes, fmt.Sprintf("service %s is not in istiod's workload API: no endpoints until it is", s.Key()))
			s.Endpoints = nil
			continue
		}
		s.Endpoints = xs.Endpoints
		s.Locality = xs.Locality
		s.Ports = slices.Clone(s.Ports)
		for j := range s.Ports {
			for _, xp := range xs.Ports {
				if xp.Port == s.Ports[j].Port && xp.TargetPort != 0 {
					s.Ports[j].TargetPort = xp.TargetPort
				}
			}
		}
	}
	m.Sort()
	return &m, notes
}
