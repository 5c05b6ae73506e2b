package xds

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// randomAddress is a random workload or service resource, with names and
// addresses drawn from small pools so that resources contest them.
func randomAddress(r *rand.Rand, contest bool) (string, any) {
	if r.IntN(3) == 0 {
		n := r.IntN(5)
		vip := fmt.Sprintf("10.96.0.%d", 2*n)
		if contest {
			vip = fmt.Sprintf("10.96.0.%d", n+r.IntN(2)) // neighbours share VIPs now and then
		}
		name, a := xdstest.Service("default", fmt.Sprintf("svc-%d", n), []string{vip},
			xdstest.Port{Service: 80, Target: uint32(8080 * r.IntN(2))})
		if contest && r.IntN(6) == 0 {
			name += "-dup" // a second resource for the same service
		}
		v, err := convertService(a.GetType().(*workloadapi.Address_Service).Service)
		if err != nil {
			panic(err)
		}
		return name, v
	}
	w := xdstest.Workload{Namespace: "default", Name: fmt.Sprintf("pod-%d", r.IntN(12)), Node: "node-a",
		IPs: []string{fmt.Sprintf("10.1.0.%d", r.IntN(200)+1)}, Services: map[string][]xdstest.Port{}, Unhealthy: r.IntN(5) == 0}
	for range r.IntN(3) {
		w.Services[fmt.Sprintf("default/svc-%d", r.IntN(5))] = []xdstest.Port{{Service: 80, Target: uint32(8080 + r.IntN(2))}}
	}
	if r.IntN(3) == 0 {
		w.Policies = []string{fmt.Sprintf("default/pol-%d", r.IntN(3))}
	}
	name, a := w.Address()
	if contest && r.IntN(8) == 0 {
		name += "-other-uid" // the same workload key from a second resource
	}
	v, err := convertWorkload(a.GetType().(*workloadapi.Address_Workload).Workload, "", nil)
	if err != nil {
		panic(err)
	}
	return name, v
}

// TestWorkloadIndex_ChangesEqualFullBuild applies random responses
// (resources added, changed, removed, some contesting names and
// addresses) and holds the model state the changes build to the full
// build of the same resources after every response.
func TestWorkloadIndex_ChangesEqualFullBuild(t *testing.T) {
	for seed := range uint64(6) {
		r := rand.New(rand.NewPCG(seed, 3))
		contest := seed%2 == 0 // odd seeds: no two resources claim one name or address
		st := newStore()
		state := model.NewState()
		b := buildWorkloadMesh(st)
		ix := newWorkloadIndex(st, b)
		fulls := 0
		for step := range 300 {
			typeURL := AddressType
			old := map[string]*entry{}
			if r.IntN(5) == 0 {
				typeURL = AuthorizationType
				name := fmt.Sprintf("default/pol-%d", r.IntN(3))
				old[name] = st.get(typeURL, name)
				if r.IntN(3) == 0 {
					st.remove(typeURL, name)
				} else {
					st.put(typeURL, name, "v", &model.Policy{Name: name[len("default/"):], Namespace: "default", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow})
				}
			} else {
				for range 1 + r.IntN(3) {
					name, v := randomAddress(r, contest)
					if _, seen := old[name]; !seen {
						old[name] = st.get(typeURL, name)
					}
					if r.IntN(4) == 0 {
						st.remove(typeURL, name)
					} else {
						st.put(typeURL, name, "v", v)
					}
				}
			}
			c, _, full := ix.delta(st, typeURL, old)
			if full {
				fulls++
				b := buildWorkloadMesh(st)
				c = state.DiffMesh(b.mesh)
				ix = newWorkloadIndex(st, b)
			}
			if err := state.Check(c); err != nil {
				t.Fatalf("seed %d step %d (full %v): changes %s do not apply: %v", seed, step, full, c, err)
			}
			state.Apply(c)
			want := buildWorkloadMesh(st).mesh
			if d := state.DiffMesh(want); !d.Empty() {
				t.Fatalf("seed %d step %d (full %v): after changes %s the state differs from the full build by %s: services %v removed %v workloads %d removed %v",
					seed, step, full, c, d, keys(d.Services), d.RemovedServices, len(d.Workloads), d.RemovedWorkloads)
			}
		}
		t.Logf("seed %d: %d full builds of 300", seed, fulls)
		if contest && fulls == 0 || !contest && fulls > 0 {
			t.Fatalf("seed %d (contests %v): %d of 300 responses took the full build", seed, contest, fulls)
		}
	}
}

func keys(ss []*model.Service) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Key())
	}
	return out
}

// TestWorkloadIndex_ContestedHostKeepsItsService: two resources claim one
// service host (the older one's service is in force). A workload that
// joins the service makes the host dirty; the change must keep the
// service, as the full build does, not remove it.
func TestWorkloadIndex_ContestedHostKeepsItsService(t *testing.T) {
	st := newStore()
	svc := func(name string, vip string) any {
		_, a := xdstest.Service("default", "svc-4", []string{vip}, xdstest.Port{Service: 80, Target: 8080})
		v, err := convertService(a.GetType().(*workloadapi.Address_Service).Service)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	name, _ := xdstest.Service("default", "svc-4", nil)
	st.put(AddressType, name, "v", svc(name, "10.96.0.4"))
	st.put(AddressType, name+"-dup", "v", svc(name+"-dup", "10.96.0.5"))
	state := model.NewState()
	b := buildWorkloadMesh(st)
	state.Apply(state.DiffMesh(b.mesh))
	ix := newWorkloadIndex(st, b)
	if len(b.mesh.Services) != 1 {
		t.Fatalf("full build: services %v, want svc-4 once", b.mesh.Services)
	}

	wname, a := xdstest.Workload{Namespace: "default", Name: "pod-1", IPs: []string{"10.1.0.1"},
		Services: map[string][]xdstest.Port{"default/svc-4": {{Service: 80, Target: 8080}}}}.Address()
	w, err := convertWorkload(a.GetType().(*workloadapi.Address_Workload).Workload, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	st.put(AddressType, wname, "v", w)
	c, _, full := ix.delta(st, AddressType, map[string]*entry{wname: nil})
	if full {
		c = state.DiffMesh(buildWorkloadMesh(st).mesh)
	}
	if len(c.RemovedServices) > 0 {
		t.Fatalf("a workload joining svc-4 removed %v (full build: %v)", c.RemovedServices, full)
	}
	state.Apply(c)
	if d := state.DiffMesh(buildWorkloadMesh(st).mesh); !d.Empty() {
		t.Fatalf("after the change the state differs from the full build by %s", d)
	}
}
