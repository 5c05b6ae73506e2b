package dataplane

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// countingMap counts the writes that reach a map.
type countingMap struct {
	Map
	writes *atomic.Int64
}

func (m countingMap) Put(k, v any) error { m.writes.Add(1); return m.Map.Put(k, v) }
func (m countingMap) Delete(k any) error { m.writes.Add(1); return m.Map.Delete(k) }

func counting(s *Store) (*Store, *atomic.Int64) {
	n := &atomic.Int64{}
	c := *s
	for _, m := range []*Map{&c.KmFrontend, &c.KmService, &c.KmEndpoint, &c.KmBackend, &c.KmRr,
		&c.KmAuthzPol, &c.KmAuthzMatch, &c.KmAuthzVal, &c.KmAuthzIp, &c.KmAuthzList, &c.KmAuthzGlob,
		&c.KmAuthzAddr, &c.KmAuthzNetns, &c.KmAuthzStats} {
		*m = countingMap{*m, n}
	}
	return &c, n
}

func scaleLimits(services int) bpf.Limits {
	l := bpf.DefaultLimits
	l.Services, l.Frontends = uint32(services+16), uint32(services+16)
	l.Backends, l.Endpoints = uint32(10*services+64), uint32(20*services+4096)
	return l
}

// TestDataplane_RestartAt50kServicesAdoptsEverythingRewritesNothing: a
// second dataplane on the maps of a first (a kmeshd restart) given the
// same 50,000 services and 500,000 endpoints adopts every entry and
// writes none.
func TestDataplane_RestartAt50kServicesAdoptsEverythingRewritesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("50,000 services: not in -short")
	}
	const services = 50_000
	limits := scaleLimits(services)
	maps := newMaps(t, limits)
	m := bigMesh(services, 10)
	old, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Apply(m); err != nil {
		t.Fatal(err)
	}
	before := old.MapStats()
	cs, writes := counting(maps)
	d, err := New(cs, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("the restarted dataplane wrote %d entries for the same mesh", n)
	}
	if d.stale != nil {
		t.Fatalf("entries left unadopted: %d services, %d backends, %d frontends, %d slots",
			len(d.stale.services), len(d.stale.backends), len(d.stale.frontends), len(d.stale.endpoints))
	}
	if after := d.MapStats(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("map fill after restart %v, before %v", after, before)
	}
	if len(d.services) != services || len(d.backends) != 10*services {
		t.Fatalf("adopted %d services and %d backends", len(d.services), len(d.backends))
	}
}

// BenchmarkDataplane_UpdateOneEndpoint moves one endpoint of one service
// to a new address through Update (the delta path), at 10,000 services /
// 100,000 endpoints and at 50,000 / 500,000: the dataplane's share of one
// xDS change.
func BenchmarkDataplane_UpdateOneEndpoint(b *testing.B) {
	for _, services := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			limits := scaleLimits(services)
			maps := newMaps(b, limits)
			m := bigMesh(services, 10)
			d, err := New(maps, limits, discard)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Apply(m); err != nil {
				b.Fatal(err)
			}
			st := model.NewState()
			st.Apply(st.DiffMesh(m))
			for i := 0; b.Loop(); i++ {
				w := m.Workloads[(i*7919)%len(m.Workloads)]
				w.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})}
				c := &model.Changes{Workloads: []*model.Workload{&w}}
				if err := st.Check(c); err != nil {
					b.Fatal(err)
				}
				st.Apply(c)
				if err := d.Update(c, st); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
