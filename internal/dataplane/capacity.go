package dataplane

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// ErrMapFull means a config does not fit a map; the error names the map and
// the kmeshd flag that sizes it.
var ErrMapFull = errors.New("map is full")

// flags names the kmeshd flag that sizes each map.
var flags = map[string]string{
	bpf.KmeshMapKmService:  "--max-services",
	bpf.KmeshMapKmFrontend: "--max-frontends",
	bpf.KmeshMapKmEndpoint: "--max-endpoints",
	bpf.KmeshMapKmBackend:  "--max-backends",
	bpf.KmeshMapKmManage:   "--max-workloads",

	bpf.KmeshMapKmAuthzPol:   "--max-policies",
	bpf.KmeshMapKmAuthzMatch: "--max-policy-matches",
	bpf.KmeshMapKmAuthzVal:   "--max-policy-values",
	bpf.KmeshMapKmAuthzIp:    "--max-policy-ipblocks",
	bpf.KmeshMapKmAuthzList:  "--max-policy-refs",
	bpf.KmeshMapKmAuthzAddr:  "--max-workload-addresses",
	bpf.KmeshMapKmAuthzNetns: "--max-workloads",
	bpf.KmeshMapKmTunnelSrc:  "--max-workloads",
}

func fullError(m string, need, capacity int) error {
	return fmt.Errorf("%w: %s needs %d entries for this config, it holds %d (raise %s)", ErrMapFull, m, need, capacity, flags[m])
}

// mapErr names the map and its flag when the kernel says a map is full
// (E2BIG), which checkCapacity should have caught first. ENOMEM comes from
// maps created with BPF_F_NO_PREALLOC (the service and authorization
// tables: bpf/include/maps.h), which allocate each entry on write and can
// fail below their capacity when the kernel is short of memory: the write
// is retried, like any failed one (the caller keeps the previous state and
// tries again).
func mapErr(m string, err error) error {
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("%w: %s (raise %s): %w", ErrMapFull, m, flags[m], err)
	}
	if errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%s: kernel out of memory for a new entry (the map is not preallocated): %w", m, err)
	}
	return err
}

// checkCapacity computes the most entries each map holds while want is
// applied (old and new side by side, since new entries are written before
// old ones go) and refuses a config that would overflow a map, before any
// write.
func (d *Dataplane) checkCapacity(p *plan) error {
	want := p.want
	staleServices, staleBackends, staleFrontends, staleEndpoints := 0, 0, 0, 0
	if d.stale != nil {
		staleServices, staleBackends = len(d.stale.services), len(d.stale.backends)
		staleFrontends, staleEndpoints = len(d.stale.frontends), len(d.stale.endpoints)
	}

	services := staleServices + len(d.services)
	for key := range want.services {
		if d.services[key] == nil {
			services++
		}
	}
	if services > int(d.limits.Services) {
		return fullError(bpf.KmeshMapKmService, services, int(d.limits.Services))
	}

	backends := staleBackends + len(d.backends)
	for key := range want.backends {
		if d.backends[key] == nil {
			backends++
		}
	}
	if backends > int(d.limits.Backends) {
		return fullError(bpf.KmeshMapKmBackend, backends, int(d.limits.Backends))
	}

	frontends := staleFrontends + len(d.frontends)
	for k := range want.frontends {
		if _, ok := d.frontends[k]; !ok {
			frontends++
		}
	}
	if frontends > int(d.limits.Frontends) {
		return fullError(bpf.KmeshMapKmFrontend, frontends, int(d.limits.Frontends))
	}

	// Live slots stay until their service flips, so count every live slot
	// plus the new table of every service that changes.
	endpoints := staleEndpoints + d.liveSlots
	for key, ws := range want.services {
		if !d.services[key].unchanged(ws) {
			endpoints += slotCount(ws.endpoints[0]) + slotCount(ws.endpoints[1])
		}
	}
	if endpoints > int(d.limits.Endpoints) {
		return fullError(bpf.KmeshMapKmEndpoint, endpoints, int(d.limits.Endpoints))
	}
	return nil
}
