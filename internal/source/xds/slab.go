package xds

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/model"
)

// slabSize is how many workloads one array of a slab holds.
const slabSize = 512

// slab hands out the parts of converted workloads from arrays of
// slabSize, for a response of many workloads: a first state. Allocated
// one by one, each part lands in a span among garbage of its size class
// (the decoded protobuf message, its strings and maps), and a few
// survivors keep a span in use after that garbage is collected: the
// workload, its memberships and addresses; and the model.Workload, which
// is garbage itself once the build holds its copy (rebind) but has the
// size class of the converted services, 10,000 of which kept the spans
// of 100,000 model.Workloads in use (26 MB). An array is held until the
// last workload in it is gone, so what a slab holds never exceeds what
// the first state held. Later changes allocate one by one (a nil slab).
// One converting goroutine uses a slab.
type slab struct {
	// The rest of each array, not handed out yet.
	models    []model.Workload
	workloads []workload
	members   []membership
	addresses []netip.Addr
	// decoder is the goroutine's wire decoder (workload_wire.go).
	decoder decoder
}

// workload returns a zeroed workload.
func (s *slab) workload() *workload {
	if s == nil {
		return new(workload)
	}
	if len(s.workloads) == 0 {
		s.workloads = make([]workload, slabSize)
	}
	w := &s.workloads[0]
	s.workloads = s.workloads[1:]
	return w
}

// modelWorkload returns a zeroed model.Workload.
func (s *slab) modelWorkload() *model.Workload {
	if s == nil {
		return new(model.Workload)
	}
	if len(s.models) == 0 {
		s.models = make([]model.Workload, slabSize)
	}
	w := &s.models[0]
	s.models = s.models[1:]
	return w
}

// memberships returns an empty slice with room for n (nil for none).
func (s *slab) memberships(n int) []membership {
	if n == 0 {
		return nil
	}
	if s == nil || n > slabSize/8 {
		return make([]membership, 0, n)
	}
	if len(s.members) < n {
		s.members = make([]membership, slabSize)
	}
	m := s.members[:0:n]
	s.members = s.members[n:]
	return m
}

// addrs returns an empty slice with room for n (nil for none).
func (s *slab) addrs(n int) []netip.Addr {
	if n == 0 {
		return nil
	}
	if s == nil || n > slabSize/8 {
		return make([]netip.Addr, 0, n)
	}
	if len(s.addresses) < n {
		s.addresses = make([]netip.Addr, slabSize)
	}
	a := s.addresses[:0:n]
	s.addresses = s.addresses[n:]
	return a
}
