//go:build e2e

package e2e

import (
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestAdminEnrollment enrolls the client pod through the admin API
// (kmeshctl enroll), with xDS as the config source, which enrolls nothing:
// the enrollment takes effect at once, survives a kmeshd restart, and
// kmeshctl unenroll takes it back.
func TestAdminEnrollment(t *testing.T) {
	m := newMesh(t)
	kmeshctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	srv := helloXdsServer(t)
	start := func() *kmeshd {
		return m.startKmeshdBin(m.kmeshd, "node-a", "", "--xds-address", srv.Addr(), "--xds-mode", "workload")
	}
	ctl := func(k *kmeshd, args ...string) (string, error) {
		out, err := exec.Command(kmeshctl, append([]string{"--admin-address", k.admin, "--admin-socket", k.socket}, args...)...).CombinedOutput()
		return string(out), err
	}
	// reached reports whether all requests went through the service, and
	// fails the test when only some did.
	reached := func() bool {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "4", "--timeout", "1s")
		ok := 0
		for _, r := range rs {
			if r.Error == "" {
				ok++
			}
		}
		if ok != 0 && ok != len(rs) {
			t.Fatalf("%d of %d requests reached the service: %v", ok, len(rs), counts(rs))
		}
		return ok == len(rs)
	}
	client := m.pods["client"].NetnsPath

	k := start()
	if reached() {
		t.Fatal("the client reached the service before it was enrolled")
	}
	if out, err := ctl(k, "enroll", "--netns", client); err != nil || !strings.Contains(out, "enrolled "+client) {
		t.Fatalf("kmeshctl enroll: %v: %s", err, out)
	}
	if !reached() {
		t.Fatal("the client did not reach the service once enrolled")
	}
	if out, err := ctl(k, "enroll", "--netns", "/var/run/netns/no-such-namespace"); err == nil || !strings.Contains(out, "no-such-namespace") {
		t.Fatalf("kmeshctl enroll of a missing namespace: %v: %s", err, out)
	}

	// A restarted kmeshd keeps the enrollment.
	k.proc.Signal(syscall.SIGKILL)
	<-k.proc.Done()
	k = start()
	if !slices.Contains(k.configDump(t).Enrolled, client) {
		t.Fatalf("after a restart, enrolled %v, want the client's namespace", k.configDump(t).Enrolled)
	}
	if !reached() {
		t.Fatal("the client did not reach the service after kmeshd restarted")
	}

	if out, err := ctl(k, "unenroll", "--netns", client); err != nil || !strings.Contains(out, "unenrolled "+client) {
		t.Fatalf("kmeshctl unenroll: %v: %s", err, out)
	}
	if reached() {
		t.Fatal("the client still reached the service after kmeshctl unenroll")
	}
}
