package dataplane

import (
	"runtime"
	"testing"
	"weak"

	"github.com/kmesh-go/kmesh/internal/model"
)

// After FollowState the dataplane looks workloads up in the caller's state
// and holds nothing of the mesh Apply translated: the caller's copy of it
// is garbage once dropped (before, the translation's index of it lived
// until the next change: a map and a key per workload, and after a retry
// of a failed write a whole copy of the mesh). Balancing by locality still
// reads the workloads, now the state's.
func TestDataplane_FollowStateDropsTheAppliedMesh(t *testing.T) {
	maps := newMaps(t, propLimits)
	d, err := New(maps, propLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	m := bigMesh(4, 3)
	withLoadBalancing(m)
	applied := &model.Mesh{Services: m.Services, Workloads: append([]model.Workload(nil), m.Workloads...)}
	held := weak.Make(&applied.Workloads[0])
	if err := d.Apply(applied); err != nil {
		t.Fatal(err)
	}
	want := dump(t, maps)
	st := model.NewState()
	st.Apply(st.DiffMesh(m))
	d.FollowState(st)
	applied = nil
	runtime.GC()
	runtime.GC()
	if held.Value() != nil {
		t.Fatal("the dataplane still holds the workloads of the mesh Apply translated")
	}
	k := m.Workloads[0].Key()
	if got := d.lbWorkload(k); got != st.Workload(k) {
		t.Fatalf("workload %s looked up as %p, the state's is %p", k, got, st.Workload(k))
	}
	// A change that rewrites every locality service's tables reads the
	// state's workloads and writes what a full sync of the mesh writes.
	c := st.DiffMesh(m)
	for i := range m.Services {
		s := m.Services[i]
		s.Endpoints = s.Endpoints[1:]
		c.Services = append(c.Services, &s)
	}
	undo := st.Apply(c)
	if err := d.Update(c, st); err != nil {
		st.Apply(undo)
		t.Fatal(err)
	}
	if got, full := normalDump(t, d, maps), fullSync(t, maps, st.Mesh()); got != full {
		t.Fatalf("after the change the maps differ from a full sync:\n%s\nwant:\n%s", got, full)
	}
	if dump(t, maps) == want {
		t.Fatal("the change wrote nothing")
	}
}
