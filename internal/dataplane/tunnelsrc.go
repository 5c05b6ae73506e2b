package dataplane

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// applyTunnelSrc writes km_tunnel_src for the enrolled namespaces: each
// one's workload addresses, which the connect hook binds a socket it sends
// to the tunnel to, so the application's getsockname() shows its pod
// address rather than the tunnel's loopback (bpf/include/tunnel.h). A
// namespace whose workload is not known yet gets no entry: its redirected
// sockets connect from loopback, and are tunnelled the same. The first call
// reads the map, so a restarted kmeshd rewrites nothing still right and
// removes what a previous instance left for namespaces gone since.
func (d *Dataplane) applyTunnelSrc(cookies map[uint64]string) error {
	if d.tunnelSrc == nil {
		have := map[uint64]bpf.KmeshBackendValue{}
		var c uint64
		var v bpf.KmeshBackendValue
		it := d.maps.KmTunnelSrc.Iterate()
		for it.Next(&c, &v) {
			have[c] = v
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read %s: %w", bpf.KmeshMapKmTunnelSrc, err)
		}
		d.tunnelSrc = have
	}
	want := map[uint64]bpf.KmeshBackendValue{}
	for c, key := range cookies {
		w := d.lbWorkload(key)
		if w == nil {
			continue
		}
		if b, ok := backendValue(w.Addresses); ok {
			want[c] = b
		}
	}
	if len(want) > int(d.limits.Workloads) {
		return fullError(bpf.KmeshMapKmTunnelSrc, len(want), int(d.limits.Workloads))
	}
	for c := range d.tunnelSrc {
		if _, ok := want[c]; ok {
			continue
		}
		if err := d.maps.KmTunnelSrc.Delete(c); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete %s entry of netns cookie %d: %w", bpf.KmeshMapKmTunnelSrc, c, err)
		}
		delete(d.tunnelSrc, c)
	}
	for c, v := range want {
		if cur, ok := d.tunnelSrc[c]; ok && cur == v {
			continue
		}
		if err := d.maps.KmTunnelSrc.Put(c, v); err != nil {
			return fmt.Errorf("write %s entry of netns cookie %d: %w", bpf.KmeshMapKmTunnelSrc, c, mapErr(bpf.KmeshMapKmTunnelSrc, err))
		}
		d.tunnelSrc[c] = v
	}
	return nil
}
