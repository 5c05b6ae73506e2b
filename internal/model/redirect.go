package model

import "slices"

// WithWaypointRedirect returns the mesh as a node's kernel must balance
// it: a service that uses a waypoint for service traffic is balanced over
// that waypoint's instances (the workloads labelled gateway-name), on the
// service's own ports, so the waypoint sees each connection on the port
// the client asked for; with no instance the service has no endpoint and
// connections to it are refused at once, never sent around the waypoint.
// A workload that uses a waypoint for workload traffic (waypoint-for
// workload or all) gets a service of its own addresses on every port
// (ServiceWaypoint.Workload), balanced the same way. Other services are
// unchanged, and so is m: a waypoint reads the original.
func WithWaypointRedirect(m *Mesh) *Mesh {
	changed := false
	for i := range m.Services {
		if m.ServiceWaypoint(&m.Services[i]) != "" {
			changed = true
			break
		}
	}
	for i := range m.Workloads {
		if changed {
			break
		}
		changed = m.WorkloadWaypoint(&m.Workloads[i]) != ""
	}
	if !changed {
		return m
	}
	out := *m
	out.Services = slices.Clone(m.Services)
	for i := range out.Services {
		s := &out.Services[i]
		key := m.ServiceWaypoint(s)
		if key == "" {
			continue
		}
		s.Endpoints = m.waypointEndpoints(key)
		s.Ports = slices.Clone(s.Ports)
		for j := range s.Ports {
			s.Ports[j].TargetPort = s.Ports[j].Port
		}
	}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		key := m.WorkloadWaypoint(w)
		if key == "" || len(w.Addresses) == 0 {
			continue
		}
		out.Services = append(out.Services, WorkloadService(w, key, m.waypointEndpoints(key), ""))
	}
	return &out
}

func (m *Mesh) waypointEndpoints(key string) []Endpoint {
	var eps []Endpoint
	for _, w := range m.WaypointInstances(key) {
		eps = append(eps, Endpoint{Workload: w.Key()})
	}
	return eps
}

// WorkloadServiceSuffix ends the name of the service that stands for a
// workload's own addresses (WorkloadService): no Kubernetes name has an
// "@", so it is never a real service's.
const WorkloadServiceSuffix = "@waypoint"

// WorkloadService is the service that sends connections to w's own
// addresses, on every port, to the waypoint's instances eps (none: such
// connections are refused). waypoint names the waypoint as the source
// knows it; unresolved says why it is not known ("" when it is).
func WorkloadService(w *Workload, waypoint string, eps []Endpoint, unresolved string) Service {
	return Service{
		Name: w.Name + WorkloadServiceSuffix, Namespace: w.Namespace,
		Addresses: slices.Clone(w.Addresses),
		Ports:     []ServicePort{{Port: 0, TargetPort: 0, Protocol: ProtocolTCP}},
		LBMode:    LBRandom,
		Endpoints: eps,
		Waypoint:  &ServiceWaypoint{Address: waypoint, Unresolved: unresolved, Workload: w.Key()},
	}
}
