package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// mapSets are the maps that are reused or created anew only together,
// because an entry of one names an entry of another by an id the dataplane
// gives out (internal/dataplane): a program reading a new km_service with
// an old km_endpoint would find ids that are not there, and a dataplane
// that adopts a previous instance's services (their entries in km_service
// and km_endpoint unchanged) writes nothing into their km_lb_conf or
// km_maglev, which must therefore hold what that instance wrote. A set is
// created anew when any of its maps is not pinned or differs from this
// build (a new map of the set, another --max-*), filled by the first full
// state, and switched to together with the programs at Commit; the old set
// serves until then.
var mapSets = map[string][]string{
	// Service ids, backend ids and client classes (maps.h, lb.h).
	"service tables": {
		KmeshMapKmFrontend, KmeshMapKmService, KmeshMapKmEndpoint, KmeshMapKmBackend, KmeshMapKmRr,
		KmeshMapKmLbPrio, KmeshMapKmLbClient, KmeshMapKmLbConf, KmeshMapKmLbAffinity,
		KmeshMapKmLbBackend, KmeshMapKmLbEject, KmeshMapKmMaglev,
	},
	// Policy ids and list ids (authz.h); km_authz_stats counts per policy id.
	"authorization": {
		KmeshMapKmAuthzAddr, KmeshMapKmAuthzGlob, KmeshMapKmAuthzList, KmeshMapKmAuthzPol,
		KmeshMapKmAuthzMatch, KmeshMapKmAuthzVal, KmeshMapKmAuthzIp, KmeshMapKmAuthzNetns,
		KmeshMapKmAuthzStats,
	},
}

// standaloneMaps are reused or created each on its own: no entry names an
// entry of another map, and whoever writes one diffs against what it holds
// (the enroller km_manage, the dataplane km_tunnel and km_tunnel_src) or
// writes it whole at start (telemetry km_records), or the programs write
// it as connections come and an empty one only costs what it held:
// counters that start again, km_socks' and km_redir_bytes' accelerated
// sockets going back to TCP (order-safe: a socket without a km_redir_bytes
// entry sends by TCP), the entries of connections being set up in
// km_tunnel_dst and km_tunnel_legs (Commit carries those over: carry.go).
// Socket storage holds per-connection state that no config can rebuild.
var standaloneMaps = []string{
	KmeshMapKmManage,
	KmeshMapKmTunnel, KmeshMapKmTunnelSrc, KmeshMapKmTunnelDst, KmeshMapKmTunnelLegs,
	KmeshMapKmSocks, KmeshMapKmRedirBytes,
	KmeshMapKmTcpStats, KmeshMapKmTcpFull, KmeshMapKmRecords, KmeshMapKmEvents, KmeshMapKmEventsLost,
	KmeshMapKmSockOrig, KmeshMapKmSockLb, KmeshMapKmSockConn2, KmeshMapKmTunnelSk,
}

// setOf returns the set a map is reused or created with: its own name for
// a standalone map. A map listed nowhere (TestMapSets_EveryMapListed fails
// on it) stands alone.
func setOf(name string) string {
	for set, maps := range mapSets {
		if slices.Contains(maps, name) {
			return set
		}
	}
	return name
}

type openedMap struct {
	m      *ebpf.Map
	reused bool
}

// openMaps opens every map of s pinned in dir that this build can reuse,
// and creates the others: a map not pinned or not compatible, with the
// rest of its set (mapSets). Every other pinned map is reused with its
// contents.
func openMaps(dir string, s *ebpf.CollectionSpec, log *slog.Logger) (map[string]openedMap, error) {
	pinned := map[string]*ebpf.Map{}
	defer func() { closeAll(pinned) }()
	missing := map[string]string{} // set -> a map of it that cannot be reused
	for name, ms := range s.Maps {
		if strings.HasPrefix(name, ".") {
			continue // internal maps (.rodata, .bss) belong to one program load
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			missing[setOf(name)] = name
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("map %s: open pin: %w", name, err)
		}
		if err := ms.Compatible(m); err != nil {
			log.Warn("pinned map differs from this build; creating new maps", "map", name, "set", setOf(name), "err", err)
			m.Close()
			missing[setOf(name)] = name
			continue
		}
		pinned[name] = m
	}

	out := map[string]openedMap{}
	var create []string
	for name := range s.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if m, ok := pinned[name]; ok {
			if _, gone := missing[setOf(name)]; !gone {
				out[name] = openedMap{m: m, reused: true}
				delete(pinned, name)
				continue
			}
		}
		create = append(create, name)
	}
	if len(out) > 0 {
		// Not a first start: say what an upgrade or a new --max-* costs.
		for set, because := range missing {
			if maps := mapSets[set]; maps != nil {
				log.Info("creating a set of maps anew", "set", set, "maps", strings.Join(maps, ","), "because", because)
			} else {
				log.Info("creating a map anew", "map", set)
			}
		}
	}
	created, err := createMaps(s, create)
	for name, m := range created {
		out[name] = openedMap{m: m}
	}
	if err != nil {
		for _, o := range out {
			o.m.Close()
		}
		return nil, err
	}
	return out, nil
}

// createMaps creates the named maps of s, on every core: creating a map
// still costs the kernel its bucket array (and an LRU map its free list),
// tens of milliseconds each at the limits of 100,000 endpoints, while
// kmeshd waits to load the programs. It returns the maps created, and the
// first error.
func createMaps(s *ebpf.CollectionSpec, names []string) (map[string]*ebpf.Map, error) {
	type result struct {
		name string
		m    *ebpf.Map
		err  error
	}
	work := make(chan string, len(names))
	for _, name := range names {
		work <- name
	}
	close(work)
	results := make(chan result, len(names))
	workers := min(runtime.GOMAXPROCS(0), len(names))
	for range workers {
		go func() {
			for name := range work {
				m, err := ebpf.NewMap(s.Maps[name])
				if err != nil {
					err = fmt.Errorf("map %s: create: %w", name, err)
				}
				results <- result{name, m, err}
			}
		}()
	}
	out := make(map[string]*ebpf.Map, len(names))
	var first error
	for range names {
		r := <-results
		switch {
		case r.err != nil && first == nil:
			first = r.err
		case r.err == nil:
			out[r.name] = r.m
		}
	}
	return out, first
}
