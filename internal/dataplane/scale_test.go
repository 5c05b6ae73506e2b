package dataplane

import (
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// writeCount counts writes, in all and per map.
type writeCount struct {
	mu    sync.Mutex
	total int
	per   map[string]int
}

func (w *writeCount) add(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total++
	if w.per == nil {
		w.per = map[string]int{}
	}
	w.per[name]++
}

func (w *writeCount) Load() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

func (w *writeCount) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprint(w.per)
}

// countingMap counts the writes that reach a map.
type countingMap struct {
	Map
	name   string
	writes *writeCount
}

func (m countingMap) Put(k, v any) error { m.writes.add(m.name); return m.Map.Put(k, v) }
func (m countingMap) Delete(k any) error { m.writes.add(m.name); return m.Map.Delete(k) }

// countingTables counts the Maglev tables written and removed.
type countingTables struct {
	MaglevTables
	writes *writeCount
}

func (m countingTables) Put(i uint32, t []uint32) error {
	m.writes.add("KmMaglev")
	return m.MaglevTables.Put(i, t)
}

func (m countingTables) Delete(i uint32) error {
	m.writes.add("KmMaglev")
	return m.MaglevTables.Delete(i)
}

// counting wraps every map of s (every Map field, found by reflection so a
// map added to Store is counted too, and the Maglev tables).
func counting(s *Store) (*Store, *writeCount) {
	n := &writeCount{}
	c := *s
	v := reflect.ValueOf(&c).Elem()
	mapType := reflect.TypeFor[Map]()
	for i := range v.NumField() {
		if f := v.Field(i); f.Type() == mapType && !f.IsNil() {
			f.Set(reflect.ValueOf(Map(countingMap{f.Interface().(Map), v.Type().Field(i).Name, n})))
		}
	}
	if c.KmMaglev != nil {
		c.KmMaglev = countingTables{c.KmMaglev, n}
	}
	return &c, n
}

func scaleLimits(services int) bpf.Limits {
	l := bpf.DefaultLimits
	l.Services, l.Frontends = uint32(services+16), uint32(services+16)
	// Slots: 10 endpoints x 2 families per service, plus a quarter, as the
	// bench sizes --max-endpoints.
	l.Backends, l.Endpoints = uint32(10*services+64), uint32(25*services+4096)
	return l
}

// TestDataplane_RestartAt50kServicesAdoptsEverythingRewritesNothing: a
// second dataplane on the maps of a first (a kmeshd restart) given the
// same 50,000 services and 500,000 endpoints, some with affinity and
// outlier detection, adopts every entry and writes none, in any map of
// the store.
func TestDataplane_RestartAt50kServicesAdoptsEverythingRewritesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("50,000 services: not in -short")
	}
	restartAdopts(t, 50_000)
}

// TestDataplane_RestartAt10kAdoptsAffinityAndOutlierEntries is the same at 10,000
// services (in -short too).
func TestDataplane_RestartAt10kAdoptsAffinityAndOutlierEntries(t *testing.T) {
	restartAdopts(t, 10_000)
}

func restartAdopts(t *testing.T, services int) {
	limits := scaleLimits(services)
	maps := newMaps(t, limits)
	m := bigMesh(services, 10)
	withLoadBalancing(m)
	start := time.Now()
	old, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Apply(m); err != nil {
		t.Fatal(err)
	}
	cookies := lbClients(m)
	if err := old.ApplyNetns(cookies); err != nil {
		t.Fatal(err)
	}
	before := old.MapStats()
	prios := countPrios(t, maps.KmLbPrio)
	t.Logf("first fill of %d services / %d endpoints: %v", services, 10*services, time.Since(start).Round(time.Millisecond))
	cs, writes := counting(maps)
	start = time.Now()
	d, err := New(cs, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	if err := d.ApplyNetns(cookies); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart (new dataplane on the filled maps, first Apply): %v, %d map writes", time.Since(start).Round(time.Millisecond), writes.Load())
	if n := writes.Load(); n != 0 {
		t.Fatalf("the restarted dataplane wrote %d entries for the same mesh: %s", n, writes)
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
	if n := countPrios(t, maps.KmLbPrio); n != prios || n == 0 {
		t.Fatalf("km_lb_prio has %d entries after the restart, %d before", n, prios)
	}
}

// lbClients enrols one client of each of the four localities
// withLoadBalancing gives out (cookie -> workload key), so locality
// services have tables for client classes 1-4 besides the unknown client.
func lbClients(m *model.Mesh) map[uint64]string {
	out := map[uint64]string{}
	for i := range 4 {
		out[uint64(1000+i)] = m.Workloads[i].Key()
	}
	return out
}

// countEntries counts a map's entries, whatever their key and value.
func countEntries[K, V any](t testing.TB, m Map) int {
	t.Helper()
	var k K
	var v V
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// countPrios counts km_lb_prio's entries.
func countPrios(t testing.TB, m Map) int {
	t.Helper()
	return countEntries[bpf.KmeshLbPrioKey, bpf.KmeshLbPrio](t, m)
}

// withLoadBalancing gives the workloads localities (two regions, four
// zones) and every 100th service ClientIP affinity, the next outlier
// detection, the next both, so a restart meets entries in km_lb_conf and
// km_lb_backend too (with the kernel's counts and ejections in them, which
// a rewrite would reset), the next a routing preference (failover on
// region then zone), the next a strict one, the next Maglev, so a restart
// meets km_lb_prio, locality slot groups and Maglev tables.
func withLoadBalancing(m *model.Mesh) {
	for i := range m.Workloads {
		m.Workloads[i].Locality = model.NewLocality(fmt.Sprintf("region-%d", i%2), fmt.Sprintf("zone-%d", i%4), "")
	}
	affinity := &model.SessionAffinity{Timeout: model.DefaultAffinityTimeout}
	outlier := &model.OutlierDetection{ConsecutiveFailures: model.DefaultConsecutiveFailures,
		BaseEjectionTime: model.DefaultBaseEjectionTime, MaxEjectionPercent: 10}
	for i := range m.Services {
		s := &m.Services[i]
		switch i % 100 {
		case 0:
			s.SessionAffinity = affinity
		case 1:
			s.OutlierDetection = outlier
		case 2:
			s.SessionAffinity, s.OutlierDetection = affinity, outlier
		case 3:
			s.Locality = &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeRegion, model.ScopeZone}}
		case 4:
			s.Locality = &model.LocalityLB{Mode: model.LocalityStrict, RoutingPreference: []model.LocalityScope{model.ScopeRegion}}
			s.OutlierDetection = outlier
		case 5:
			s.LBMode = model.LBMaglev
		}
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

// policyScaleMesh is bigMesh with policies: policies workload-selector
// ones, each listed by every workload of one service (service i by
// policy i mod policies), plus two namespace-wide and two global ones;
// every workload has a service account of its own service, and the
// policies name principals, so the identities are those of the services.
func policyScaleMesh(services, policies int) *model.Mesh {
	m := bigMesh(services, 10)
	for i := range m.Workloads {
		w := &m.Workloads[i]
		s := i / 10
		w.ServiceAccount = fmt.Sprintf("sa-%d", s)
		w.Policies = []string{fmt.Sprintf("bench/p-%d", s%policies)}
	}
	match := func(i int) []model.PolicyRule {
		return []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{
			Principals:       []model.StringMatch{{Kind: model.MatchExact, Value: fmt.Sprintf("cluster.local/ns/bench/sa/sa-%d", (i*31)%services)}},
			DestinationPorts: []uint16{8080},
		}}}}}}
	}
	for i := range policies {
		m.Policies = append(m.Policies, model.Policy{Name: fmt.Sprintf("p-%d", i), Namespace: "bench",
			Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow, Rules: match(i)})
	}
	for i := range 2 {
		m.Policies = append(m.Policies,
			model.Policy{Name: fmt.Sprintf("ns-%d", i), Namespace: "bench", Scope: model.ScopeNamespace, Action: model.ActionDeny, Rules: match(i + 1)},
			model.Policy{Name: fmt.Sprintf("global-%d", i), Namespace: "kmesh-system", Scope: model.ScopeGlobal, Action: model.ActionAudit, Rules: match(i + 2)})
	}
	return m
}

// BenchmarkDataplane_UpdateOneWorkloadWithPolicies moves one workload to
// a new address through Update at 10,000 services / 100,000 endpoints with
// 100 and with 1,000 workload-selector policies (and namespace-wide and
// global ones): the authorization maps get the entries of that workload's
// old and new addresses, not the mesh's. Reported: map writes per change
// (all maps; the service maps' share is what UpdateOneEndpoint writes).
func BenchmarkDataplane_UpdateOneWorkloadWithPolicies(b *testing.B) {
	const services = 10_000
	for _, policies := range []int{100, 1000} {
		b.Run(fmt.Sprintf("services=%d/policies=%d", services, policies), func(b *testing.B) {
			limits := scaleLimits(services)
			limits.WorkloadAddresses = 4 * 10 * services
			limits.PolicyRefs = 8 * services
			raw := newMaps(b, limits)
			m := policyScaleMesh(services, policies)
			maps, writes := counting(raw)
			d, err := New(maps, limits, discard)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Apply(m); err != nil {
				b.Fatal(err)
			}
			st := model.NewState()
			st.Apply(st.DiffMesh(m))
			start := writes.Load()
			n := 0
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
				n++
			}
			b.ReportMetric(float64(writes.Load()-start)/float64(n), "writes/op")
		})
	}
}

// TestDataplane_RestartSweepsARewrittenLocalityServicesOldTables: services
// with a routing preference or Maglev that changed while no kmeshd ran are
// written again at the restart; the previous generation's km_lb_prio
// entries and locality slot groups go with the rest of what the previous
// instance left, so the maps end as a fresh start on the new mesh leaves
// them.
func TestDataplane_RestartSweepsARewrittenLocalityServicesOldTables(t *testing.T) {
	m := bigMesh(20, 4)
	withLoadBalancing(m)
	t.Run("no enrolled clients", func(t *testing.T) { restartSweeps(t, map[uint64]string{}) })
	t.Run("four client localities", func(t *testing.T) { restartSweeps(t, lbClients(m)) })
}

func restartSweeps(t *testing.T, cookies map[uint64]string) {
	limits := scaleLimits(20)
	maps := newMaps(t, limits)
	m := bigMesh(20, 4)
	withLoadBalancing(m)
	old, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Apply(m); err != nil {
		t.Fatal(err)
	}
	if err := old.ApplyNetns(cookies); err != nil {
		t.Fatal(err)
	}
	// While no kmeshd runs, the failover, strict and Maglev services
	// (3, 4, 5) each lose an endpoint.
	m2 := bigMesh(20, 4)
	withLoadBalancing(m2)
	for _, i := range []int{3, 4, 5} {
		m2.Services[i].Endpoints = m2.Services[i].Endpoints[1:]
	}
	d, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m2); err != nil {
		t.Fatal(err)
	}
	if err := d.ApplyNetns(cookies); err != nil {
		t.Fatal(err)
	}
	if d.stale != nil {
		t.Fatalf("entries left unadopted and unswept: %+v", d.stale)
	}

	freshMaps := newMaps(t, limits)
	fresh, err := New(freshMaps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Apply(m2); err != nil {
		t.Fatal(err)
	}
	if err := fresh.ApplyNetns(cookies); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		got, fresh Map
		count      func(testing.TB, Map) int
	}{
		{"km_lb_prio", maps.KmLbPrio, freshMaps.KmLbPrio, countPrios},
		{"km_endpoint", maps.KmEndpoint, freshMaps.KmEndpoint, countSlots},
	} {
		if got, want := c.count(t, c.got), c.count(t, c.fresh); got != want {
			t.Errorf("%s has %d entries after the restart, a fresh start on the same mesh writes %d", c.name, got, want)
		}
	}
	if got, want := normalDump(t, d, maps), normalDump(t, fresh, freshMaps); got != want {
		t.Errorf("maps after the restart:\n%s\nfresh start:\n%s", got, want)
	}
}

// countSlots counts km_endpoint's entries (every group).
func countSlots(t testing.TB, m Map) int {
	t.Helper()
	return countEntries[bpf.KmeshEndpointKey, bpf.KmeshEndpointValue](t, m)
}
