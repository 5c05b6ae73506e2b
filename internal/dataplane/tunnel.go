package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// TunnelAddrs returns the addresses whose connections the connect hook
// sends through the tunnel (model.Workload.TunnelledFrom).
func TunnelAddrs(m *model.Mesh, node string, meshHasCA bool) map[bpf.KmeshAuthzAddrKey]struct{} {
	out := map[bpf.KmeshAuthzAddrKey]struct{}{}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if !w.TunnelledFrom(node, meshHasCA) {
			continue
		}
		for _, a := range w.Addresses {
			out[bpf.KmeshAuthzAddrKey{Addr: bpf.AddrWords(a)}] = struct{}{}
		}
	}
	return out
}

// ApplyTunnels makes km_tunnel hold exactly want (TunnelAddrs). New entries
// go in before old ones leave; an entry never changes value, so a
// concurrent connect() sees either the old or the new set for each
// address. The first call diffs against the map itself, so a restarted
// kmeshd rewrites nothing that is still right and no tunnelled destination
// falls back to plaintext meanwhile.
func (d *Dataplane) ApplyTunnels(want map[bpf.KmeshAuthzAddrKey]struct{}) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := uint32(len(want)); n > d.limits.WorkloadAddresses {
		return fmt.Errorf("map %s: %d tunnelled workload addresses exceed its capacity %d (--max-workload-addresses)",
			bpf.KmeshMapKmTunnel, n, d.limits.WorkloadAddresses)
	}
	if d.tunnels == nil {
		have, err := readTunnels(d.maps.KmTunnel)
		if err != nil {
			return err
		}
		d.tunnels = have
	}
	hbone := bpf.KmeshTunnelValue{Proto: uint32(bpf.KmeshKmTunnelProtoKM_TUNNEL_HBONE)}
	for k := range want {
		if _, ok := d.tunnels[k]; ok {
			continue
		}
		if err := d.maps.KmTunnel.Put(k, hbone); err != nil {
			return fmt.Errorf("map %s: put: %w", bpf.KmeshMapKmTunnel, err)
		}
		d.tunnels[k] = struct{}{}
	}
	for k := range d.tunnels {
		if _, ok := want[k]; ok {
			continue
		}
		if err := d.maps.KmTunnel.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("map %s: delete: %w", bpf.KmeshMapKmTunnel, err)
		}
		delete(d.tunnels, k)
	}
	return nil
}

func readTunnels(m Map) (map[bpf.KmeshAuthzAddrKey]struct{}, error) {
	out := map[bpf.KmeshAuthzAddrKey]struct{}{}
	var k bpf.KmeshAuthzAddrKey
	var v bpf.KmeshTunnelValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: read: %w", bpf.KmeshMapKmTunnel, err)
	}
	return out, nil
}

// UpdateTunnels brings km_tunnel's entries for the addresses a change
// touched (affected: the addresses of its workloads, before and after) in
// line with st: O(the change), never O(mesh).
func (d *Dataplane) UpdateTunnels(st *model.State, affected []netip.Addr, node string, meshHasCA bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnels == nil {
		have, err := readTunnels(d.maps.KmTunnel)
		if err != nil {
			return err
		}
		d.tunnels = have
	}
	hbone := bpf.KmeshTunnelValue{Proto: uint32(bpf.KmeshKmTunnelProtoKM_TUNNEL_HBONE)}
	for _, a := range affected {
		k := bpf.KmeshAuthzAddrKey{Addr: bpf.AddrWords(a)}
		w := st.WorkloadAt(a)
		want := w != nil && w.TunnelledFrom(node, meshHasCA)
		_, have := d.tunnels[k]
		switch {
		case want && !have:
			if uint32(len(d.tunnels)) >= d.limits.WorkloadAddresses {
				return fmt.Errorf("map %s: full at %d tunnelled workload addresses (--max-workload-addresses)", bpf.KmeshMapKmTunnel, d.limits.WorkloadAddresses)
			}
			if err := d.maps.KmTunnel.Put(k, hbone); err != nil {
				return fmt.Errorf("map %s: put: %w", bpf.KmeshMapKmTunnel, err)
			}
			d.tunnels[k] = struct{}{}
		case !want && have:
			if err := d.maps.KmTunnel.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("map %s: delete: %w", bpf.KmeshMapKmTunnel, err)
			}
			delete(d.tunnels, k)
		}
	}
	return nil
}
