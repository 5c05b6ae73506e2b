package bpf

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

// TestMapSets_EveryMapListed: every map of the programs is either in one
// set or standalone, once: a new map must be given its restart rule.
func TestMapSets_EveryMapListed(t *testing.T) {
	s, err := spec(DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, maps := range mapSets {
		for _, name := range maps {
			seen[name]++
		}
	}
	for _, name := range standaloneMaps {
		seen[name]++
	}
	for name := range s.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if seen[name] != 1 {
			t.Errorf("map %s is listed %d times in mapSets and standaloneMaps, want once", name, seen[name])
		}
		delete(seen, name)
	}
	for name := range seen {
		t.Errorf("map %s is listed but the programs have none", name)
	}
}

// restartBed is a data plane pinned in a bpffs directory of the test's own,
// attached to a cgroup of its own, both removed when the test ends.
type restartBed struct {
	t    *testing.T
	opts Options
}

func newRestartBed(t *testing.T) *restartBed {
	requireRoot(t)
	root, err := cgroupv2.Root()
	if err != nil {
		t.Skip(err)
	}
	name := fmt.Sprintf("kmesh-test-mapsets-%d", os.Getpid())
	cg := filepath.Join(root, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(DefaultFS, name)
	t.Cleanup(func() {
		if err := Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	})
	limits := Limits{Services: 8, Frontends: 8, Endpoints: 8, Backends: 8, Workloads: 8, Sockets: 8,
		Policies: 8, PolicyMatches: 8, PolicyValues: 8, PolicyIPBlocks: 8, PolicyRefs: 8, WorkloadAddresses: 8, AffinityClients: 8}
	return &restartBed{t: t, opts: Options{Dir: dir, Cgroup: cg, Limits: limits}}
}

// start opens the data plane as kmeshd does, lets fill write into its maps
// before Commit, commits and closes it (the pins keep it), and returns
// what bpf logged and the names of the maps Open created.
func (b *restartBed) start(limits Limits, fill func(*Datapath)) (string, []string) {
	b.t.Helper()
	var logged bytes.Buffer
	opts := b.opts
	opts.Limits = limits
	d, err := Open(opts, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		b.t.Fatal(err)
	}
	defer d.Close()
	var created []string
	for name := range d.fresh {
		created = append(created, name)
	}
	sort.Strings(created)
	if fill != nil {
		fill(d)
	}
	if err := d.Commit(); err != nil {
		b.t.Fatal(err)
	}
	return logged.String(), created
}

// pinnedIDs are the kernel's ids of the maps pinned in the directory.
func (b *restartBed) pinnedIDs() map[string]ebpf.MapID {
	b.t.Helper()
	s, err := spec(b.opts.Limits)
	if err != nil {
		b.t.Fatal(err)
	}
	ids := map[string]ebpf.MapID{}
	for name := range s.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(b.opts.Dir, name), nil)
		if err != nil {
			b.t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			b.t.Fatal(err)
		}
		id, _ := info.ID()
		ids[name] = id
	}
	return ids
}

// has reports whether the map pinned as name holds key.
func (b *restartBed) has(name string, key any) bool {
	b.t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(b.opts.Dir, name), nil)
	if err != nil {
		b.t.Fatal(err)
	}
	defer m.Close()
	return m.Lookup(key, make([]byte, m.ValueSize())) == nil
}

// loadedCounts are maps_created and maps_reused of the "programs loaded"
// line.
func loadedCounts(t *testing.T, logged string) (created, reused int) {
	t.Helper()
	sm := regexp.MustCompile(`msg="programs loaded" .*maps_created=(\d+) maps_reused=(\d+)`).FindStringSubmatch(logged)
	if sm == nil {
		t.Fatalf("no programs loaded line in:\n%s", logged)
	}
	created, _ = strconv.Atoi(sm[1])
	reused, _ = strconv.Atoi(sm[2])
	return created, reused
}

// An entry of each kind of map the tests follow: the service tables, the
// authorization set, a standalone map the dataplane writes, and one the
// programs write for the tunnel.
var (
	keyService   = uint32(3)
	keyAuthzAddr = KmeshAuthzAddrKey{Addr: [4]uint32{0, 0, 0xffff0000, 0x0a000001}}
	keyTunnelSrc = uint64(42)
	keyTunnelDst = KmeshTunnelKey{NetnsCookie: 42, Addr: [4]uint32{0, 0, 0xffff0000, 0x0a000002}, Port: 40000}
)

func fillOne(d *Datapath) {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	must(d.KmService.Put(keyService, KmeshServiceValue{Slots: [2]uint32{1, 0}}))
	must(d.KmAuthzAddr.Put(keyAuthzAddr, KmeshAuthzPeer{Identity: 7}))
	must(d.KmTunnelSrc.Put(keyTunnelSrc, KmeshBackendValue{Addr4: 0x0a000001, Flags: 1}))
	must(d.KmTunnelDst.Put(keyTunnelDst, KmeshTunnelDst{Port: 8080, Family: 2}))
}

// requireKept: every map pinned before and not in recreated has the same
// id (the same map, reused), and each of recreated a new one.
func requireKept(t *testing.T, before, after map[string]ebpf.MapID, recreated []string) {
	t.Helper()
	for name, id := range before {
		switch {
		case slices.Contains(recreated, name) && after[name] == id:
			t.Errorf("map %s: still map %d, want a new one", name, id)
		case !slices.Contains(recreated, name) && after[name] != id:
			t.Errorf("map %s: map %d replaced by %d, want it reused", name, id, after[name])
		}
	}
}

// TestOpen_MissingStandaloneMapCreatesOnlyIt: a build that adds a map (an
// upgrade from pins of a build without km_tunnel_legs) creates that map
// alone; every other pinned map is reused, with its entries, and the
// programs loaded line says so.
func TestOpen_MissingStandaloneMapCreatesOnlyIt(t *testing.T) {
	b := newRestartBed(t)
	logged, created := b.start(b.opts.Limits, fillOne)
	if c, r := loadedCounts(t, logged); c != len(created) || r != 0 || c == 0 {
		t.Fatalf("first start: maps_created=%d maps_reused=%d, want %d created, none reused", c, r, len(created))
	}
	before := b.pinnedIDs()
	if err := os.Remove(filepath.Join(b.opts.Dir, KmeshMapKmTunnelLegs)); err != nil {
		t.Fatal(err)
	}

	logged, created = b.start(b.opts.Limits, nil)
	if want := []string{KmeshMapKmTunnelLegs}; !slices.Equal(created, want) {
		t.Errorf("created %v, want %v", created, want)
	}
	if c, r := loadedCounts(t, logged); c != 1 || r != len(before)-1 {
		t.Errorf("programs loaded: maps_created=%d maps_reused=%d, want 1 and %d", c, r, len(before)-1)
	}
	requireKept(t, before, b.pinnedIDs(), []string{KmeshMapKmTunnelLegs})
	for _, e := range []struct {
		m   string
		key any
	}{{KmeshMapKmService, keyService}, {KmeshMapKmAuthzAddr, keyAuthzAddr}, {KmeshMapKmTunnelSrc, keyTunnelSrc}, {KmeshMapKmTunnelDst, keyTunnelDst}} {
		if !b.has(e.m, e.key) {
			t.Errorf("map %s lost its entry %+v", e.m, e.key)
		}
	}
}

// TestOpen_ServiceTableChangedCreatesItsSet: a service table that is not
// pinned, or whose size changed (another --max-endpoints), is created anew
// with the whole set of service tables, which the first full state fills;
// every other map is reused with its entries.
func TestOpen_ServiceTableChangedCreatesItsSet(t *testing.T) {
	set := slices.Clone(mapSets["service tables"])
	sort.Strings(set)
	for _, tc := range []struct {
		name   string
		change func(b *restartBed) Limits
	}{
		{"missing km_rr", func(b *restartBed) Limits {
			if err := os.Remove(filepath.Join(b.opts.Dir, KmeshMapKmRr)); err != nil {
				t.Fatal(err)
			}
			return b.opts.Limits
		}},
		{"another --max-endpoints", func(b *restartBed) Limits {
			l := b.opts.Limits
			l.Endpoints++
			return l
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newRestartBed(t)
			b.start(b.opts.Limits, fillOne)
			before := b.pinnedIDs()
			limits := tc.change(b)

			logged, created := b.start(limits, nil)
			if !slices.Equal(created, set) {
				t.Errorf("created %v, want the service tables %v", created, set)
			}
			if c, r := loadedCounts(t, logged); c != len(set) || r != len(before)-len(set) {
				t.Errorf("programs loaded: maps_created=%d maps_reused=%d, want %d and %d", c, r, len(set), len(before)-len(set))
			}
			if !strings.Contains(logged, `msg="creating a set of maps anew" set="service tables"`) {
				t.Errorf("no line says the service tables are created anew:\n%s", logged)
			}
			requireKept(t, before, b.pinnedIDs(), set)
			if b.has(KmeshMapKmService, keyService) {
				t.Errorf("the new km_service holds the old one's entry (nothing filled it)")
			}
			for _, e := range []struct {
				m   string
				key any
			}{{KmeshMapKmAuthzAddr, keyAuthzAddr}, {KmeshMapKmTunnelSrc, keyTunnelSrc}, {KmeshMapKmTunnelDst, keyTunnelDst}} {
				if !b.has(e.m, e.key) {
					t.Errorf("map %s lost its entry %+v", e.m, e.key)
				}
			}
		})
	}
}
