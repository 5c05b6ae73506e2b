package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// What the kernel decided on its own: ejections and affinity entries, read
// for kmeshctl explain and the metrics.

// Ejection is an endpoint outlier detection took out of a service.
type Ejection struct {
	Workload string
	Left     time.Duration // until it returns
	Times    int           // ejections in a row
}

// OutlierStat is one service's outlier detection state.
type OutlierStat struct {
	Service string
	Total   uint64 // ejections since the service got its id
	Ejected []Ejection
}

// monotonicNow is bpf_ktime_get_ns's clock.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read the monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// Outliers returns the outlier detection state of every service that has
// it, by service key.
func (d *Dataplane) Outliers() ([]OutlierStat, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	names := d.backendNames()
	var out []OutlierStat
	for key, s := range d.services {
		if s.lb == nil || s.lb.spec.flags&uint16(bpf.KmeshKmLbFlagKM_LB_OUTLIER) == 0 {
			continue
		}
		st := OutlierStat{Service: key}
		var ej bpf.KmeshLbEject
		if err := d.maps.KmLbEject.Lookup(s.id, &ej); err == nil {
			st.Total = ej.Total
		}
		for b := range s.lb.members {
			var v bpf.KmeshLbBackend
			if err := d.maps.KmLbBackend.Lookup(bpf.KmeshLbBackendKey{ServiceId: s.id, BackendId: b}, &v); err != nil {
				continue
			}
			if v.EjectedUntilNs > now {
				st.Ejected = append(st.Ejected, Ejection{Workload: names[b], Left: time.Duration(v.EjectedUntilNs - now), Times: int(v.Ejections)})
			}
		}
		slices.SortFunc(st.Ejected, func(a, b Ejection) int { return compareStrings(a.Workload, b.Workload) })
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b OutlierStat) int { return compareStrings(a.Service, b.Service) })
	return out, nil
}

// Affinity returns the endpoint a client address is kept on for a service
// and for how much longer; ok is false when it has no live entry.
func (d *Dataplane) Affinity(service string, client netip.Addr) (workload string, left time.Duration, ok bool, err error) {
	now, err := monotonicNow()
	if err != nil {
		return "", 0, false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.services[service]
	if s == nil || s.lb == nil || s.lb.spec.flags&uint16(bpf.KmeshKmLbFlagKM_LB_AFFINITY) == 0 {
		return "", 0, false, nil
	}
	fam := uint8(bpf.KmeshKmFamilyKM_FAMILY_V6)
	if client.Unmap().Is4() {
		fam = uint8(bpf.KmeshKmFamilyKM_FAMILY_V4)
	}
	k := bpf.KmeshLbAffinityKey{ServiceId: s.id, Family: fam, Client: bpf.AddrWords(client.Unmap())}
	var v bpf.KmeshLbAffinity
	if err := d.maps.KmLbAffinity.Lookup(k, &v); err != nil {
		if isNotExist(err) {
			return "", 0, false, nil
		}
		return "", 0, false, fmt.Errorf("read affinity: %w", err)
	}
	timeout := time.Duration(s.lb.spec.conf.AffinityTimeoutS) * time.Second
	age := time.Duration(now - v.LastNs)
	if age >= timeout || !s.lb.members[v.BackendId] {
		return "", 0, false, nil
	}
	return d.backendNames()[v.BackendId], timeout - age, true, nil
}

func (d *Dataplane) backendNames() map[uint32]string {
	out := make(map[uint32]string, len(d.backends))
	for k, b := range d.backends {
		out[b.id] = k
	}
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
