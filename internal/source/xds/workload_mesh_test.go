package xds

import (
	"cmp"
	"fmt"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// TestBuildWorkloadMesh_HoldsEachWorkloadOnce checks the memory rule of
// issue 12: after a build, a converted workload is the mesh's copy (one
// copy per workload), except where the two differ: a policy that has not
// arrived is left out of the mesh's copy, and the converted one still
// names it for when it does.
func TestBuildWorkloadMesh_HoldsEachWorkloadOnce(t *testing.T) {
	st := newStore()
	st.put(AuthorizationType, "default/pol-1", "v", &model.Policy{Name: "pol-1", Namespace: "default", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow})
	conv := map[string]*workload{}
	// Added in reverse key order, so the build's sorting has work to do.
	for i := 9; i >= 0; i-- {
		w := xdstest.Workload{Namespace: "default", Name: fmt.Sprintf("pod-%d", i), Node: "node-a",
			IPs: []string{fmt.Sprintf("10.1.0.%d", i+1)}, Services: map[string][]xdstest.Port{"default/svc": {{Service: 80, Target: 8080}}}}
		switch i {
		case 3:
			w.Policies = []string{"default/pol-1"}
		case 7:
			w.Policies = []string{"default/pol-missing"}
		}
		name, a := w.Address()
		v, err := convertWorkload(a.GetType().(*workloadapi.Address_Workload).Workload, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		st.put(AddressType, name, "v", v)
		conv[v.key] = v
	}
	b := buildWorkloadMesh(st)
	if len(b.mesh.Workloads) != 10 {
		t.Fatalf("%d workloads, want 10", len(b.mesh.Workloads))
	}
	for i := range b.mesh.Workloads {
		mw := &b.mesh.Workloads[i]
		w := conv[mw.Key()]
		if mw.Name == "pod-7" {
			if w.w == mw || len(mw.Policies) != 0 || len(w.w.Policies) != 1 {
				t.Errorf("pod-7: mesh policies %v, converted %v (shared %v); want the missing policy left out of the mesh's copy only", mw.Policies, w.w.Policies, w.w == mw)
			}
			continue
		}
		if w.w != mw {
			t.Errorf("%s: the converted workload is a second copy, not the mesh's", mw.Key())
		}
	}
	if got := b.mesh.Workload("default/pod-3"); got == nil || len(got.Policies) != 1 {
		t.Errorf("pod-3: %+v, want its policy default/pol-1", got)
	}
}

// The build's workload order compares 16-byte prefixes before keys; it
// must order as the keys do, whatever their length and bytes.
func TestArrival_OrdersAsKeys(t *testing.T) {
	keys := []string{"", "a", "a\x00", "a\x00\x00", "ab", "default/ep-1", "default/ep-10", "default/ep-2",
		"default/ep-123456789", "default/ep-123456788", "default/ep-12345678", "ns-\xff/x", "ns-\x00/x", "0123456789abcdef", "0123456789abcdef0", "0123456789abcdee\xff"}
	for _, a := range keys {
		for _, b := range keys {
			x, y := newArrival(&workload{key: a}, 0), newArrival(&workload{key: b}, 1)
			if got, want := x.compare(y), cmp.Or(strings.Compare(a, b), -1); got != want {
				t.Errorf("compare(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}
