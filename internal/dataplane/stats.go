package dataplane

import (
	"github.com/kmesh-go/kmesh/internal/bpf"
)

// MapStat is the fill of one map.
type MapStat struct {
	Name     string
	Entries  uint32
	Capacity uint32
}

// MapStats counts the entries of the service and authorization maps from
// what the dataplane wrote: it is their only writer, so a scrape costs no
// system call (walking every key of a map at 500,000 endpoints would cost
// as many). Entries a previous kmeshd left and the first Apply has not yet
// adopted or swept are counted too. TestDataplane_MapStatsMatchMaps holds
// the counts to a walk of the maps.
func (d *Dataplane) MapStats() []MapStat {
	d.mu.Lock()
	defer d.mu.Unlock()
	services, backends, frontends, endpoints := len(d.services), len(d.backends), len(d.frontends), d.liveSlots
	if s := d.stale; s != nil {
		services += len(s.services)
		backends += len(s.backends)
		frontends += len(s.frontends)
		endpoints += len(s.endpoints)
	}
	az := d.az
	policies, matches, vals, ips, refs := len(az.policies), 0, 0, 0, 0
	for _, p := range az.policies {
		matches += len(p.compiled.matches)
		vals += len(p.compiled.vals)
		ips += len(p.compiled.ips)
	}
	for _, l := range az.lists {
		refs += len(l.entries)
	}
	if s := az.stale; s != nil {
		policies += s.entries[bpf.KmeshMapKmAuthzPol]
		matches += s.entries[bpf.KmeshMapKmAuthzMatch]
		vals += s.entries[bpf.KmeshMapKmAuthzVal]
		ips += s.entries[bpf.KmeshMapKmAuthzIp]
		refs += s.entries[bpf.KmeshMapKmAuthzList]
	}
	orphans := d.orphanCounts()
	stat := func(name string, n int, m Map) MapStat {
		return MapStat{Name: name, Entries: uint32(n + orphans[name]), Capacity: m.MaxEntries()}
	}
	return []MapStat{
		stat(bpf.KmeshMapKmBackend, backends, d.maps.KmBackend),
		stat(bpf.KmeshMapKmEndpoint, endpoints, d.maps.KmEndpoint),
		stat(bpf.KmeshMapKmFrontend, frontends, d.maps.KmFrontend),
		stat(bpf.KmeshMapKmService, services, d.maps.KmService),
		stat(bpf.KmeshMapKmAuthzAddr, len(az.addrs), d.maps.KmAuthzAddr),
		stat(bpf.KmeshMapKmAuthzIp, ips, d.maps.KmAuthzIp),
		stat(bpf.KmeshMapKmAuthzList, refs, d.maps.KmAuthzList),
		stat(bpf.KmeshMapKmAuthzMatch, matches, d.maps.KmAuthzMatch),
		stat(bpf.KmeshMapKmAuthzNetns, len(az.netns), d.maps.KmAuthzNetns),
		stat(bpf.KmeshMapKmAuthzPol, policies, d.maps.KmAuthzPol),
		stat(bpf.KmeshMapKmAuthzVal, vals, d.maps.KmAuthzVal),
	}
}

// countKeys walks a map's keys: for the start-up scan of a previous
// instance's entries, and for tests that check MapStats.
func countKeys(m Map) (uint32, error) {
	var n uint32
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
