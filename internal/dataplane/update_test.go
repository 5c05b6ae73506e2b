package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// propLimits are small maps, so real ones are quick to create per check.
var propLimits = func() bpf.Limits {
	l := bpf.DefaultLimits
	l.Services, l.Frontends, l.Endpoints, l.Backends = 64, 256, 4096, 128
	l.Policies, l.PolicyMatches, l.PolicyValues, l.PolicyIPBlocks, l.PolicyRefs, l.WorkloadAddresses = 64, 1024, 1024, 1024, 1024, 1024
	return l
}()

// randomMesh mutates m at random: workloads and services come, change
// and go; endpoints are any subset of the workloads; policies (global,
// namespace-wide, selector) come, change and go, and workloads start and
// stop listing selector policies; service accounts come and go with
// their workloads, so the mesh's identities change.
func randomMesh(r *rand.Rand, m *model.Mesh) *model.Mesh {
	next := &model.Mesh{Policies: randomPolicies(r, m.Policies)}
	selector := map[string]bool{} // policy keys a workload may list
	for _, p := range next.Policies {
		if p.Scope == model.ScopeWorkloadSelector || r.IntN(8) == 0 {
			selector[p.Key()] = true
		}
	}
	workloads := map[string]model.Workload{}
	for _, w := range m.Workloads {
		// Policies that left leave their workloads' lists.
		w.Policies = slices.DeleteFunc(slices.Clone(w.Policies), func(k string) bool {
			return !slices.ContainsFunc(next.Policies, func(p model.Policy) bool { return p.Key() == k })
		})
		if len(w.Policies) == 0 {
			w.Policies = nil
		}
		workloads[w.Name] = w
	}
	for range 1 + r.IntN(4) {
		n := r.IntN(16)
		name := fmt.Sprintf("w%d", n)
		if r.IntN(4) == 0 {
			delete(workloads, name)
			continue
		}
		i := len(name) + r.IntN(200)
		w := model.Workload{Name: name, Namespace: workloadNS(n), Node: []string{"node-a", "node-b"}[r.IntN(2)], Weight: uint32(1 + r.IntN(3)),
			ServiceAccount: []string{"", "sa-a", "sa-b", "sa-c", fmt.Sprintf("sa-%s", name)}[r.IntN(5)]}
		for _, k := range slices.Sorted(maps.Keys(selector)) {
			if r.IntN(3) == 0 {
				w.Policies = append(w.Policies, k)
			}
		}
		switch r.IntN(4) {
		case 0:
			w.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i), byte(r.IntN(250))})}
		case 1:
			w.Addresses = []netip.Addr{netip.MustParseAddr(fmt.Sprintf("fd00::%x", r.IntN(60000)))}
		case 2:
			w.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 2, byte(i), byte(r.IntN(250))}), netip.MustParseAddr(fmt.Sprintf("fd00:1::%x", r.IntN(60000)))}
		}
		workloads[name] = w
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range workloads {
			if !yield(k) {
				return
			}
		}
	})
	for _, n := range names {
		next.Workloads = append(next.Workloads, workloads[n])
	}
	services := map[string]model.Service{}
	for _, s := range m.Services {
		// Endpoints of workloads that left go with them.
		s.Endpoints = slices.DeleteFunc(slices.Clone(s.Endpoints), func(e model.Endpoint) bool {
			_, ok := workloads[e.Workload[strings.IndexByte(e.Workload, '/')+1:]]
			return !ok
		})
		services[s.Name] = s
	}
	for range 1 + r.IntN(3) {
		n := r.IntN(8)
		name := fmt.Sprintf("s%d", n)
		if r.IntN(4) == 0 {
			delete(services, name)
			continue
		}
		s := model.Service{Name: name, Namespace: "default", LBMode: []model.LBMode{model.LBRandom, model.LBRoundRobin}[r.IntN(2)],
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(n), byte(r.IntN(2))})},
			Ports:     []model.ServicePort{{Port: uint16(80 + r.IntN(2)), TargetPort: uint16(8080 + r.IntN(3)), Protocol: model.ProtocolTCP}}}
		if r.IntN(2) == 0 {
			s.Addresses = append(s.Addresses, netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", n)))
		}
		for _, wn := range names {
			if r.IntN(2) == 0 {
				s.Endpoints = append(s.Endpoints, model.Endpoint{Workload: workloadNS(workloadN(wn)) + "/" + wn})
			}
		}
		services[name] = s
	}
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for k := range services {
			if !yield(k) {
				return
			}
		}
	}) {
		next.Services = append(next.Services, services[n])
	}
	if err := next.Validate(); err != nil {
		panic(err)
	}
	return next
}

func workloadN(name string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(name, "w"))
	return n
}

// workloadNS puts a quarter of randomMesh's workloads in a second
// namespace.
func workloadNS(n int) string {
	if n >= 12 {
		return "other"
	}
	return "default"
}

// randomPolicies changes a few of ps at random: added, removed, moved to
// another scope, namespace or action, or given other rules; rules match
// principals (of the service accounts randomMesh gives out, so an
// identity coming or going changes what they compile to), namespaces,
// ports and source addresses.
func randomPolicies(r *rand.Rand, ps []model.Policy) []model.Policy {
	if r.IntN(3) != 0 {
		return ps
	}
	byName := map[string]model.Policy{}
	for _, p := range ps {
		byName[p.Name] = p
	}
	sa := func() []model.StringMatch {
		return []model.StringMatch{{Kind: model.MatchExact, Value: "cluster.local/ns/" + []string{"default", "other"}[r.IntN(2)] +
			"/sa/" + []string{"default", "sa-a", "sa-b", "sa-c", "sa-w3"}[r.IntN(5)]}}
	}
	for range 1 + r.IntN(2) {
		name := fmt.Sprintf("p%d", r.IntN(8))
		if r.IntN(4) == 0 {
			delete(byName, name)
			continue
		}
		p := model.Policy{Name: name, Namespace: []string{"default", "other"}[r.IntN(2)],
			Scope:  []model.PolicyScope{model.ScopeGlobal, model.ScopeNamespace, model.ScopeWorkloadSelector, model.ScopeWorkloadSelector}[r.IntN(4)],
			Action: []model.PolicyAction{model.ActionAllow, model.ActionDeny, model.ActionAudit}[r.IntN(3)], DryRun: r.IntN(6) == 0}
		if old, ok := byName[name]; ok && r.IntN(2) == 0 {
			// Only the rules change: no list does.
			p.Namespace, p.Scope, p.Action, p.DryRun = old.Namespace, old.Scope, old.Action, old.DryRun
		}
		if p.Scope == model.ScopeGlobal {
			p.Namespace = "kmesh-system"
		}
		for range 1 + r.IntN(2) {
			var m model.PolicyMatch
			switch r.IntN(5) {
			case 0:
				m.Principals = sa()
			case 1:
				m.NotPrincipals = sa()
			case 2:
				m.Namespaces = []model.StringMatch{{Kind: model.MatchExact, Value: "other"}}
			case 3:
				m.SourceIPs = []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 1+r.IntN(2)))}
			}
			if r.IntN(2) == 0 {
				m.DestinationPorts = []uint16{uint16(8080 + r.IntN(3))}
			}
			p.Rules = append(p.Rules, model.PolicyRule{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{m}}}})
		}
		byName[name] = p
	}
	out := make([]model.Policy, 0, len(byName))
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, byName[n])
	}
	return out
}

var idField = regexp.MustCompile(`^(frontend \S+ )service=(\d+)|^service (\d+) (mode=\S+) gen=\d+|^endpoint service=(\d+) family=(\S+) gen=\d+ slot=\d+ backend=(\d+)|^backend (\d+)`)

// normalDump is the service maps with ids replaced by the names they
// stand for, generations left out, and each slot table as a sorted list:
// two dataplanes that gave out ids in different orders wrote the same
// mesh when their normal dumps are equal.
func normalDump(t *testing.T, d *Dataplane, s *Store) string {
	t.Helper()
	svc, be := map[string]string{}, map[string]string{}
	for k, st := range d.services {
		svc[fmt.Sprint(st.id)] = k
	}
	for k, b := range d.backends {
		be[fmt.Sprint(b.id)] = k
	}
	lines, err := Dump(s)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range lines {
		m := idField.FindStringSubmatch(l)
		switch {
		case m == nil:
			if strings.HasPrefix(l, "authz_") {
				l = normalAuthz(d, l)
			}
			out = append(out, l)
		case m[2] != "":
			out = append(out, m[1]+"service="+svc[m[2]]+l[len(m[0]):])
		case m[3] != "":
			out = append(out, "service "+svc[m[3]]+" "+m[4]+l[len(m[0]):])
		case m[5] != "":
			out = append(out, "endpoint service="+svc[m[5]]+" family="+m[6]+" backend="+be[m[7]])
		case m[8] != "":
			out = append(out, "backend "+be[m[8]]+l[len(m[0]):])
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

var (
	authzPolicyID = regexp.MustCompile(`^(authz_policy )(\d+)( action=\S+) gen=\d+|(policy=)(\d+) gen=\d+|(policy=)(\d+)$`)
	authzListID   = regexp.MustCompile(`^(authz_list )(\d+)\[|(_list=|list=)(\d+)/`)
)

// normalAuthz names the policy and list ids of an authorization map line
// (a policy by key, a list by the keys it holds) and leaves generations
// out.
func normalAuthz(d *Dataplane, l string) string {
	policy := map[string]string{}
	for k, p := range d.az.policies {
		policy[fmt.Sprint(p.id)] = k
	}
	list := func(id string) string {
		for _, ls := range d.az.lists {
			if fmt.Sprint(ls.id) == id {
				var keys []string
				for _, pid := range ls.entries {
					keys = append(keys, policy[fmt.Sprint(pid)])
				}
				return "[" + strings.Join(keys, ",") + "]"
			}
		}
		return "unknown-list-" + id
	}
	l = authzPolicyID.ReplaceAllStringFunc(l, func(s string) string {
		m := authzPolicyID.FindStringSubmatch(s)
		switch {
		case m[2] != "":
			return m[1] + policy[m[2]] + m[3]
		case m[5] != "":
			return m[4] + policy[m[5]]
		}
		return m[6] + policy[m[7]]
	})
	return authzListID.ReplaceAllStringFunc(l, func(s string) string {
		m := authzListID.FindStringSubmatch(s)
		if m[2] != "" {
			return m[1] + list(m[2]) + "["
		}
		return m[3] + list(m[4]) + "/"
	})
}

// fullSync writes m into empty maps of the same kind as like.
func fullSync(t *testing.T, like *Store, m *model.Mesh) string {
	t.Helper()
	var s *Store
	if _, fake := like.KmBackend.(*fakeMap); fake {
		s = NewFakeStore(propLimits).Store
	} else {
		s = newMaps(t, propLimits)
	}
	d, err := New(s, propLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	return normalDump(t, d, s)
}

// TestDataplane_DeltasEqualFullSync applies random sequences of changes
// as deltas (model.State + Update) and, after each, holds the maps to what
// a full sync of the same mesh writes into empty maps, entry by entry
// (ids named), and MapStats to a walk of the maps. The authorization maps
// are compared too (policies and lists named by their keys): policies
// global, namespace-wide and selected come, change and go, workloads
// start and stop listing them, identities appear and leave.
func TestDataplane_DeltasEqualFullSync(t *testing.T) {
	testStores(t, propLimits, func(t *testing.T, s *Store) {
		// Real maps: each step's full sync creates a set of maps, slow on
		// a loaded machine; the fake store runs more seeds.
		seeds := uint64(6)
		if _, fake := s.KmBackend.(*fakeMap); !fake {
			seeds = 2
		}
		for seed := range seeds {
			r := rand.New(rand.NewPCG(seed, 12))
			d, err := New(s, propLimits, discard)
			if err != nil {
				t.Fatal(err)
			}
			st := model.NewState()
			m := &model.Mesh{}
			incremental := 0 // changes to policies or workloads written by authzChange
			for step := range 40 {
				m = randomMesh(r, m)
				c := st.DiffMesh(m)
				if err := st.Check(c); err != nil {
					t.Fatalf("seed %d step %d: check: %v", seed, step, err)
				}
				if d.az.ix != nil && len(m.Policies) > 0 && len(c.Policies)+len(c.RemovedPolicies)+len(c.Workloads)+len(c.RemovedWorkloads) > 0 {
					incremental++
				}
				st.Apply(c)
				if err := d.Update(c, st); err != nil {
					t.Fatalf("seed %d step %d: update: %v", seed, step, err)
				}
				if got, want := normalDump(t, d, s), fullSync(t, s, m); got != want {
					t.Fatalf("seed %d step %d (%s): deltas wrote\n%s\nfull sync writes\n%s", seed, step, c, got, want)
				}
				checkStats(t, d, s)
			}
			if incremental < 20 {
				t.Errorf("seed %d: only %d of 40 changes wrote the authorization maps incrementally", seed, incremental)
			}
			// Empty the maps for the next seed.
			if err := d.Apply(&model.Mesh{}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestDataplane_FailedWriteRetriesToConvergence fails one map write of a
// change at random (EIO on any map, ENOMEM on the policy tables, which are
// not preallocated), undoes the state as the daemon does, retries the
// previous state until it applies, and holds the maps to a full sync of
// it; then the change itself goes through.
func TestDataplane_FailedWriteRetriesToConvergence(t *testing.T) {
	f := NewFakeStore(propLimits)
	s := f.Store
	d, err := New(s, propLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 15))
	st := model.NewState()
	m := &model.Mesh{}
	failures := 0
	for step := range 60 {
		next := randomMesh(r, m)
		c := st.DiffMesh(next)
		if err := st.Check(c); err != nil {
			t.Fatal(err)
		}
		undo := st.Apply(c)
		start, at := f.Writes(), 1+r.IntN(12)
		f.Fail(func(op, name string) error {
			if f.write-start != at {
				return nil
			}
			if strings.HasPrefix(name, "km_authz") {
				return unix.ENOMEM
			}
			return unix.EIO
		})
		err := d.Update(c, st)
		f.Fail(nil)
		if err != nil {
			failures++
			if !errors.Is(err, unix.EIO) && !errors.Is(err, unix.ENOMEM) {
				t.Fatalf("step %d: %v", step, err)
			}
			st.Apply(undo)
			if err := d.Apply(st.Mesh()); err != nil {
				t.Fatalf("step %d: retry: %v", step, err)
			}
			if got, want := normalDump(t, d, s), fullSync(t, s, m); got != want {
				t.Fatalf("step %d: after a failed write and a retry the maps are\n%s\nthe previous state is\n%s", step, got, want)
			}
			st.Apply(c)
			if err := d.Update(c, st); err != nil {
				t.Fatal(err)
			}
		}
		m = next
		if got, want := normalDump(t, d, s), fullSync(t, s, m); got != want {
			t.Fatalf("step %d: maps\n%s\nwant\n%s", step, got, want)
		}
		checkStats(t, d, s)
	}
	if failures < 10 {
		t.Fatalf("only %d of 60 changes hit an injected failure", failures)
	}
}

// A first sync whose backend or slot write fails midway (large enough
// that the services' slot tables are computed beside the backend write and
// the slots are written in two halves at once) leaves the backends before
// the failed one, no slot and no service, and the next Apply writes what a
// full sync into empty maps writes.
func TestDataplane_FirstSyncFailedWriteConverges(t *testing.T) {
	limits := bpf.DefaultLimits
	m := bigMesh(300, 10) // 3,000 backends, 6,000 slots
	ref := NewFakeStore(limits)
	rd, err := New(ref.Store, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Apply(m); err != nil {
		t.Fatal(err)
	}
	want := normalDump(t, rd, ref.Store)
	for _, tc := range []struct {
		failMap      string
		at, backends int
	}{
		{bpf.KmeshMapKmBackend, 700, 699},
		{bpf.KmeshMapKmEndpoint, 1000, 3000},
		{bpf.KmeshMapKmEndpoint, 5000, 3000},
	} {
		f := NewFakeStore(limits)
		d, err := New(f.Store, limits, discard)
		if err != nil {
			t.Fatal(err)
		}
		puts := 0
		f.Fail(func(op, name string) error {
			if name != tc.failMap {
				return nil
			}
			if puts++; puts == tc.at {
				return unix.EIO
			}
			return nil
		})
		err = d.Apply(m)
		f.Fail(nil)
		if !errors.Is(err, unix.EIO) {
			t.Fatalf("Apply with write %d of %s failing: %v, want EIO", tc.at, tc.failMap, err)
		}
		if b, s, e := f.Len(bpf.KmeshMapKmBackend), f.Len(bpf.KmeshMapKmService), f.Len(bpf.KmeshMapKmEndpoint); b != tc.backends || s != 0 || e != 0 {
			t.Fatalf("after write %d of %s failed: %d backends, %d services, %d slots; want %d, 0, 0", tc.at, tc.failMap, b, s, e, tc.backends)
		}
		if err := d.Apply(m); err != nil {
			t.Fatal(err)
		}
		if got := normalDump(t, d, f.Store); got != want {
			t.Fatalf("write %d of %s failed, after the retry the maps are\n%s\nwant\n%s", tc.at, tc.failMap, got, want)
		}
	}
}
