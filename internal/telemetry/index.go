package telemetry

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/model"
)

// index answers who an address is, from the mesh state the daemon keeps
// (model.State, updated per change, so nothing is re-indexed per update).
type index struct{ st *model.State }

func newIndex(m *model.Mesh) *index {
	st := model.NewState()
	st.Apply(st.DiffMesh(m))
	return &index{st: st}
}

func (ix *index) workload(a netip.Addr) *model.Workload { return ix.st.WorkloadAt(a.Unmap()) }

// serviceOf names the service a connection belongs to: the one dialed
// (outbound, balanced), or the one of the destination workload that listens
// on the local port (inbound).
func (ix *index) serviceOf(dialed netip.AddrPort, dst *model.Workload, dstPort uint16) *model.Service {
	if dialed.IsValid() {
		if s := ix.st.ServiceAt(netip.AddrPortFrom(dialed.Addr().Unmap(), dialed.Port())); s != nil {
			return s
		}
	}
	if dst == nil {
		return nil
	}
	for _, s := range ix.st.ServicesOf(dst.Key()) {
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
