package xds

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/internal/model"
)

// A service that istiod gives a waypoint is reached only through it, as
// ztunnel does: its endpoints become the waypoint's instances, on the
// service's own ports (the plaintext redirect the file source gets from
// model.WithWaypointRedirect; kmesh-waypoint listens on the ports of the
// services it serves). A waypoint that is not known (not in the workload
// API yet, or with no instance taking traffic) leaves the service without
// endpoints, so connects to it are refused at once: the waypoint is never
// bypassed. The service's Waypoint field says which it is.

// waypoints finds the instances of a waypoint among the resources of one
// build.
type waypoints struct {
	byHost   map[string]*service // host -> the service that holds it
	byAddr   map[netip.Addr]*service
	workload map[netip.Addr]*workload
	members  map[string][]member
}

func newWaypoints(members map[string][]member) *waypoints {
	return &waypoints{byHost: map[string]*service{}, byAddr: map[netip.Addr]*service{},
		workload: map[netip.Addr]*workload{}, members: members}
}

// addService records a service of the build (the older one wins, as in
// the build itself).
func (wp *waypoints) addService(s *service) {
	if _, ok := wp.byHost[s.host]; !ok {
		wp.byHost[s.host] = s
	}
	for _, a := range s.s.Addresses {
		if _, ok := wp.byAddr[a]; !ok {
			wp.byAddr[a] = s
		}
	}
}

func (wp *waypoints) addWorkload(w *workload) {
	for _, a := range w.w.Addresses {
		if _, ok := wp.workload[a]; !ok {
			wp.workload[a] = w
		}
	}
}

// instances returns the workloads a connection to the waypoint r may go
// to, or why there are none.
func (wp *waypoints) instances(r *waypointRef) ([]model.Endpoint, string) {
	var s *service
	if r.host != "" {
		s = wp.byHost[r.host]
	} else {
		s = wp.byAddr[r.addr]
		if s == nil {
			if w := wp.workload[r.addr]; w != nil {
				if !w.endpoint || !w.healthy {
					return nil, fmt.Sprintf("waypoint workload %s does not take traffic", w.w.Key())
				}
				return []model.Endpoint{{Workload: w.w.Key()}}, ""
			}
		}
	}
	if s == nil {
		return nil, "waypoint " + r.String() + " is not known"
	}
	var eps []model.Endpoint
	for _, mb := range wp.members[s.host] {
		if mb.w.endpoint && (mb.w.healthy || s.allowUnhealthy) {
			eps = append(eps, model.Endpoint{Workload: mb.w.w.Key()})
		}
	}
	if len(eps) == 0 {
		return nil, "waypoint " + r.String() + " has no instance taking traffic"
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int {
		if a.Workload < b.Workload {
			return -1
		}
		if a.Workload > b.Workload {
			return 1
		}
		return 0
	})
	return slices.Compact(eps), ""
}

// redirect makes ms, the service s as built, reachable only through its
// waypoint.
func (wp *waypoints) redirect(s *service, ms *model.Service, notes *[]string) {
	eps, why := wp.instances(s.waypoint)
	ms.Waypoint = &model.ServiceWaypoint{Address: s.waypoint.String(), Unresolved: why}
	ms.Endpoints = eps
	ms.Ports = slices.Clone(s.s.Ports)
	for i := range ms.Ports {
		ms.Ports[i].TargetPort = ms.Ports[i].Port
	}
	if why != "" {
		*notes = append(*notes, fmt.Sprintf("service %s: %s; connections to it are refused until it is", s.host, why))
	}
}
