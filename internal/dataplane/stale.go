package dataplane

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// staleEntries are what a previous kmeshd left in pinned maps. They keep
// serving connections until the first full state is written, then go.
type staleEntries struct {
	services  map[uint32]bool
	backends  map[uint32]bool
	frontends map[bpf.KmeshFrontendKey]bool
	endpoints []bpf.KmeshEndpointKey
}

func (s *staleEntries) empty() bool {
	return len(s.services)+len(s.backends)+len(s.frontends)+len(s.endpoints) == 0
}

func scanStale(maps *bpf.KmeshMaps) (*staleEntries, error) {
	s := &staleEntries{services: map[uint32]bool{}, backends: map[uint32]bool{}, frontends: map[bpf.KmeshFrontendKey]bool{}}
	var id uint32
	var sv bpf.KmeshServiceValue
	it := maps.KmService.Iterate()
	for it.Next(&id, &sv) {
		s.services[id] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmService, err)
	}
	var bv bpf.KmeshBackendValue
	it = maps.KmBackend.Iterate()
	for it.Next(&id, &bv) {
		s.backends[id] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmBackend, err)
	}
	var fk bpf.KmeshFrontendKey
	var fv bpf.KmeshFrontendValue
	it = maps.KmFrontend.Iterate()
	for it.Next(&fk, &fv) {
		s.frontends[fk] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmFrontend, err)
	}
	var ek bpf.KmeshEndpointKey
	var ev bpf.KmeshEndpointValue
	it = maps.KmEndpoint.Iterate()
	for it.Next(&ek, &ev) {
		s.endpoints = append(s.endpoints, ek)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEndpoint, err)
	}
	return s, nil
}

// sweepStale removes the previous instance's entries that the first full
// state did not overwrite: frontends first, then services, slots, backends.
func (d *Dataplane) sweepStale() error {
	s := d.stale
	for k := range s.frontends {
		if _, ours := d.frontends[k]; ours {
			continue
		}
		if err := d.maps.KmFrontend.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep frontend %s:%d: %w", wordsAddr(k.Addr), hostPort(k.Port), err)
		}
	}
	for id := range s.services {
		if err := d.maps.KmService.Delete(id); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep service %d: %w", id, err)
		}
	}
	for _, k := range s.endpoints {
		if err := d.maps.KmEndpoint.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep endpoint slot %+v: %w", k, err)
		}
	}
	for id := range s.backends {
		if err := d.maps.KmBackend.Delete(id); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep backend %d: %w", id, err)
		}
	}
	for id := range s.services {
		d.serviceIDs.put(id)
	}
	for id := range s.backends {
		d.backendIDs.put(id)
	}
	d.log.Info("removed entries of a previous instance", "services", len(s.services), "backends", len(s.backends))
	d.stale = nil
	return nil
}
