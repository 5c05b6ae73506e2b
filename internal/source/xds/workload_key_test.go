package xds

import (
	"testing"
	"unsafe"

	"istio.io/istio/pkg/workloadapi"
)

// A workload's key and name are the end of its Istio UID, in the UID's own
// memory (one string per workload, not three); a UID that does not end in
// namespace/name leaves them made apart, with the same values.
func TestConvertWorkload_KeyAndNameShareTheUID(t *testing.T) {
	within := func(s, in string) bool {
		p, b := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(in)))
		return p >= b && p+uintptr(len(s)) <= b+uintptr(len(in))
	}
	for _, tc := range []struct {
		uid, ns, name string
		shared        bool
	}{
		{"Kubernetes//Pod/default/ep-7", "default", "ep-7", true},
		{"default/ep-7", "default", "ep-7", true},
		{"Kubernetes//Pod/default/xep-7", "default", "ep-7", false},
		{"Kubernetes//Pod/other/ep-7", "default", "ep-7", false},
		{"Kubernetes//Pod/xdefault/ep-7", "default", "ep-7", false},
		{"ep-7", "default", "ep-7", false},
	} {
		w, err := convertWorkload(&workloadapi.Workload{Uid: tc.uid, Name: tc.name, Namespace: tc.ns}, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if w.key != tc.ns+"/"+tc.name || w.w.Name != tc.name || w.w.UID != tc.uid || w.key != w.w.Key() {
			t.Errorf("uid %s: key %q, name %q, uid %q", tc.uid, w.key, w.w.Name, w.w.UID)
		}
		if got := within(w.key, w.w.UID) && within(w.w.Name, w.w.UID); got != tc.shared {
			t.Errorf("uid %s: key and name in the UID's memory: %v, want %v", tc.uid, got, tc.shared)
		}
	}
}
