package model

import "testing"

// A workload's key is namespace/name whatever its UID; when the UID ends in
// it, Key makes no string (the state and the indexes share the UID's).
func TestWorkload_KeyFromUID(t *testing.T) {
	for _, tc := range []struct {
		uid   string
		fresh bool
	}{
		{"Kubernetes//Pod/default/ep-7", false},
		{"default/ep-7", false},
		{"", true},
		{"ep-7", true},
		{"Kubernetes//Pod/default/xep-7", true},
		{"Kubernetes//Pod/xdefault/ep-7", true},
		{"Kubernetes//Pod/other/ep-7", true},
		{"Kubernetes//Pod/default/ep-7/x", true},
	} {
		w := &Workload{Namespace: "default", Name: "ep-7", UID: tc.uid}
		if k := w.Key(); k != "default/ep-7" {
			t.Errorf("uid %q: key %q", tc.uid, k)
		}
		if allocs := testing.AllocsPerRun(10, func() { _ = w.Key() }); (allocs > 0) != tc.fresh {
			t.Errorf("uid %q: %v allocations per Key, want a new string: %v", tc.uid, allocs, tc.fresh)
		}
	}
}
