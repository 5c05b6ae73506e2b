package kubemesh

import (
	"encoding/binary"
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
	if err := s.frontends.Lookup(frontendKey(vip, Port), &fv); err != nil {
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

// frontendKey is km_frontend's key for addr:port over TCP (addresses as
// the kernel's four 32-bit words, the port in network order).
func frontendKey(addr netip.Addr, port uint16) bpf.KmeshFrontendKey {
	var k bpf.KmeshFrontendKey
	b := addr.As16()
	for i := range k.Addr {
		k.Addr[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], port)
	k.Port = binary.NativeEndian.Uint16(p[:])
	k.Proto = 6 // IPPROTO_TCP
	return k
}
