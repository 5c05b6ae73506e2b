package bpf

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbe_AuthzFollowsTheKernel: the real probe (which kmeshd's
// readiness rests on; tests elsewhere edit its result to simulate an older
// kernel) finds bpf_loop in cgroup programs on kernels from 5.17, and a
// Datapath reports what it found.
func TestProbe_AuthzFollowsTheKernel(t *testing.T) {
	requireRoot(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", u.Release, err)
	}
	f, err := probe()
	if err != nil {
		t.Fatal(err)
	}
	want := major > 5 || major == 5 && minor >= 17
	if f.Authz != want {
		t.Fatalf("kernel %d.%d: probe says authz %v, want %v", major, minor, f.Authz, want)
	}
	if d := (&Datapath{features: f}); d.AuthzEnforced() != want {
		t.Fatalf("AuthzEnforced() = %v, want %v", d.AuthzEnforced(), want)
	}
}
