package dataplane

import (
	"github.com/kmesh-go/kmesh/internal/bpf"
)

// adoptLB returns what a previous instance wrote for an adopted service's
// affinity and outlier detection (km_lb_conf, km_lb_backend) when it is
// what writeLB would write for ws, so a restart leaves the service, and
// the kernel's failure counts, ejections and affinity entries, as they
// are. ok is false when the service must be written again: the maps hold
// something else, or the service has a routing preference or Maglev,
// whose tables (per client class, inner maps) are not read back.
func (d *Dataplane) adoptLB(id uint32, sv bpf.KmeshServiceValue, ws *desiredService) (st *lbState, ok bool) {
	sp := ws.lb
	if lbUnchanged(nil, sp) {
		return nil, true
	}
	if sp.locality != nil || ws.lbMode == uint8(bpf.KmeshKmLbModeKM_LB_MAGLEV) || sv.Flags != sp.flags {
		return nil, false
	}
	st = &lbState{spec: sp, members: map[uint32]bool{}}
	for _, eps := range ws.endpoints {
		for _, e := range eps {
			b := d.backends[e.workload]
			if b == nil {
				return nil, false
			}
			st.members[b.id] = true
		}
	}
	want := sp.conf
	want.Backends = uint32(len(st.members))
	var conf bpf.KmeshLbConf
	if err := d.maps.KmLbConf.Lookup(id, &conf); err != nil || conf != want {
		return nil, false
	}
	var v bpf.KmeshLbBackend
	for b := range st.members {
		if err := d.maps.KmLbBackend.Lookup(bpf.KmeshLbBackendKey{ServiceId: id, BackendId: b}, &v); err != nil {
			return nil, false
		}
	}
	return st, true
}
