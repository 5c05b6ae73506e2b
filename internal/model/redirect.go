package model

import "slices"

// WithWaypointRedirect returns the mesh as a node's kernel must balance
// it: a service that uses a waypoint is balanced over that waypoint's
// instances (the workloads labelled gateway-name), on the service's own
// ports, so the waypoint sees each connection on the port the client asked
// for; with no instance the service has no endpoint and connections to it
// are refused at once, never sent around the waypoint. Other services are
// unchanged, and so is m: a waypoint reads the original.
//
// This is the plaintext redirect. Once HBONE carries the original VIP:port
// and the client's identity, the connect hook sends such connections
// through the tunnel instead.
func WithWaypointRedirect(m *Mesh) *Mesh {
	changed := false
	for i := range m.Services {
		if m.Services[i].UsesWaypoint() != "" {
			changed = true
			break
		}
	}
	if !changed {
		return m
	}
	out := *m
	out.Services = slices.Clone(m.Services)
	for i := range out.Services {
		s := &out.Services[i]
		key := s.UsesWaypoint()
		if key == "" {
			continue
		}
		s.Endpoints = nil
		for _, w := range m.WaypointInstances(key) {
			s.Endpoints = append(s.Endpoints, Endpoint{Workload: w.Key()})
		}
		s.Ports = slices.Clone(s.Ports)
		for j := range s.Ports {
			s.Ports[j].TargetPort = s.Ports[j].Port
		}
	}
	return &out
}
