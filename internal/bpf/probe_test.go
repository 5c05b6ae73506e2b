package bpf

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
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

// TestConfigure_AccelerationNeedsItsBound: on a kernel whose sk_msg lacks
// what acceleration needs (bpf_probe_read_kernel among it, without which
// nothing bounds what a receiver holds unread), --accelerate leaves
// acceleration off and says why; with it, acceleration is on.
func TestConfigure_AccelerationNeedsItsBound(t *testing.T) {
	for _, skmsg := range []bool{false, true} {
		s, err := spec(DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		var logged bytes.Buffer
		f := Features{SkMsg: skmsg, Telemetry: true, Authz: true, GetPeerName: true, SetRetval: true}
		if err := f.configure(s, Options{Accelerate: true, Telemetry: true}, slog.New(slog.NewTextHandler(&logged, nil))); err != nil {
			t.Fatal(err)
		}
		var on bool
		if err := s.Variables["km_accelerate"].Get(&on); err != nil {
			t.Fatal(err)
		}
		_, prog := s.Programs[KmeshProgKmSkmsg]
		warned := strings.Contains(logged.String(), "bpf_probe_read_kernel") && strings.Contains(logged.String(), "acceleration is off")
		if on != skmsg || prog != skmsg || warned == skmsg {
			t.Errorf("sk_msg features %v: km_accelerate %v, km_skmsg loaded %v, warned %v; want %v, %v, %v:\n%s",
				skmsg, on, prog, warned, skmsg, skmsg, !skmsg, logged.String())
		}
	}
}
