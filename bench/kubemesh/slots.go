package kubemesh

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// Slots reads, from the pinned maps of a kmeshd (its --bpf-dir), how many
// endpoints the kernel balances a service's address:Port over: the
// frontend's service entry's slot count.
type Slots struct {
	frontends, services *ebpf.Map
}

// OpenSlots opens bpfDir's frontend and service maps read-only.
func OpenSlots(bpfDir string) (*Slots, error) {
	fe, err := ebpf.LoadPinnedMap(filepath.Join(bpfDir, bpf.KmeshMapKmFrontend), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	svc, err := ebpf.LoadPinnedMap(filepath.Join(bpfDir, bpf.KmeshMapKmService), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		fe.Close()
		return nil, err
	}
	return &Slots{frontends: fe, services: svc}, nil
}

// Of returns the slot count of vip:Port, or an error when the maps have no
// such frontend (the service has not arrived).
func (s *Slots) Of(vip netip.Addr) (uint32, error) {
	var fv bpf.KmeshFrontendValue
	if err := s.frontends.Lookup(bpf.TCPFrontendKey(vip, Port), &fv); err != nil {
		return 0, fmt.Errorf("frontend %s:%d: %w", vip, Port, err)
	}
	var sv bpf.KmeshServiceValue
	if err := s.services.Lookup(fv.ServiceId, &sv); err != nil {
		return 0, fmt.Errorf("service %d of frontend %s:%d: %w", fv.ServiceId, vip, Port, err)
	}
	return sv.Slots[0], nil
}

// Missing returns how many of the cluster's services the maps do not hold
// with one slot per ready pod, and the first of them.
func (s *Slots) Missing(c *Cluster) (n int, first string) {
	for _, svc := range c.Services {
		want := 0
		for _, p := range svc.Pods {
			if c.Pods[p].Ready {
				want++
			}
		}
		got, err := s.Of(svc.ClusterIP)
		if err == nil && int(got) == want {
			continue
		}
		if n == 0 {
			first = fmt.Sprintf("%s/%s (%s): %d slots, want %d", svc.Namespace, svc.Name, svc.ClusterIP, got, want)
			if err != nil {
				first = fmt.Sprintf("%s/%s: %v", svc.Namespace, svc.Name, err)
			}
		}
		n++
	}
	return n, first
}

func (s *Slots) Close() {
	s.frontends.Close()
	s.services.Close()
}
