package telemetry

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/model"
)

// index answers who an address is, from the mesh last applied.
type index struct {
	workloads map[netip.Addr]*model.Workload
	frontends map[netip.AddrPort]*model.Service
	// served: for each workload, the services it is an endpoint of, to name
	// the service of an incoming connection by its target port.
	served map[string][]*model.Service
}

func newIndex(m *model.Mesh) *index {
	ix := &index{
		workloads: map[netip.Addr]*model.Workload{},
		frontends: map[netip.AddrPort]*model.Service{},
		served:    map[string][]*model.Service{},
	}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		for _, a := range w.Addresses {
			ix.workloads[a] = w
		}
	}
	for i := range m.Services {
		s := &m.Services[i]
		for _, a := range s.Addresses {
			for _, p := range s.Ports {
				ix.frontends[netip.AddrPortFrom(a, p.Port)] = s
			}
		}
		for _, e := range s.Endpoints {
			ix.served[e.Workload] = append(ix.served[e.Workload], s)
		}
	}
	return ix
}

func (ix *index) workload(a netip.Addr) *model.Workload { return ix.workloads[a.Unmap()] }

// serviceOf names the service a connection belongs to: the one dialed
// (outbound, balanced), or the one of the destination workload that listens
// on the local port (inbound).
func (ix *index) serviceOf(dialed netip.AddrPort, dst *model.Workload, dstPort uint16) *model.Service {
	if dialed.IsValid() {
		if s := ix.frontends[netip.AddrPortFrom(dialed.Addr().Unmap(), dialed.Port())]; s != nil {
			return s
		}
	}
	if dst == nil {
		return nil
	}
	for _, s := range ix.served[dst.Key()] {
		for _, p := range s.Ports {
			if p.TargetPort == dstPort {
				return s
			}
		}
	}
	return nil
}

// hostname is the service's name as Istio's metrics label it.
func hostname(s *model.Service) string {
	if s == nil {
		return ""
	}
	return s.Name + "." + s.Namespace + ".svc.cluster.local"
}
